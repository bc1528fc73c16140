//! Every WGSL module parses and validates with naga, no GPU needed, under the capabilities
//! it is compiled with: modules without subgroup code must validate *without* the SUBGROUP
//! capability (the browser and GL have none). Every module may use `unpack2x16float`
//! (packed f16 weights), which naga gates behind SHADER_FLOAT16_IN_FLOAT32: wgpu grants it
//! on every adapter walsh targets (WebGPU core, Vulkan, Metal, DX12, GL 4 / GLES 3).

use naga::valid::{Capabilities, ShaderStages, SubgroupOperationSet, ValidationFlags, Validator};
use walsh::gpu::Shader;

fn validate(shader: Shader, caps: Capabilities) -> Result<(), String> {
    let module = naga::front::wgsl::parse_str(shader.source())
        .map_err(|e| e.emit_to_string(shader.source()))?;
    let mut validator = Validator::new(ValidationFlags::all(), caps);
    if caps.contains(Capabilities::SUBGROUP) {
        validator.subgroup_stages(ShaderStages::COMPUTE);
        validator.subgroup_operations(SubgroupOperationSet::all());
    }
    validator
        .validate(&module)
        .map(|_| ())
        .map_err(|e| e.emit_to_string(shader.source()))
}

#[test]
fn every_shader_validates_with_the_features_it_needs() {
    for shader in Shader::ALL {
        let needs_subgroup = shader
            .required_features()
            .contains(wgpu::Features::SUBGROUP);
        let base = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
        let caps = if needs_subgroup {
            base | Capabilities::SUBGROUP
        } else {
            base
        };
        if let Err(e) = validate(shader, caps) {
            panic!("{} does not validate with {caps:?}:\n{e}", shader.name());
        }
    }
}

#[test]
fn subgroup_modules_need_the_subgroup_capability() {
    // The check above would be vacuous if naga accepted subgroup code without the
    // capability; make sure it does not.
    let err = validate(
        Shader::HadamardSubgroup,
        Capabilities::SHADER_FLOAT16_IN_FLOAT32,
    );
    assert!(err.is_err(), "hadamard+subgroup validated without SUBGROUP");
}

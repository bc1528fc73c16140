//! The report schema round trip, the figure checks and the merge. The quick run of every
//! suite on the software adapters is `tests/cli.rs`, through the `walsh` binary.

use super::report::{Environment, merge};
use super::*;

fn quick_options() -> BenchOptions {
    BenchOptions::new(vec![Suite::Kernels, Suite::Decoder, Suite::Paper], true)
}

fn synthetic(name: &str, backend: &str, fraction: f64) -> Report {
    let kernels = vec![kernels::KernelResult {
        kernel: "wht_fast".into(),
        n: 1024,
        rows: 64,
        bytes: 1 << 20,
        flops: 1 << 20,
        time: measure::Stats {
            median_s: 1e-3,
            min_s: 1e-3,
            max_s: 2e-3,
            repeats: 3,
        },
        gb_per_s: 1.0,
        gflop_per_s: 1.0,
        fraction_of_copy: fraction,
    }];
    Report {
        schema_version: SCHEMA_VERSION,
        environment: Environment::native(Some("abc".into())),
        adapter: AdapterSummary {
            index: 0,
            name: name.into(),
            backend: backend.into(),
            device_type: "cpu".into(),
            driver: "d".into(),
            driver_info: "i".into(),
            subgroup: false,
            subgroup_min_size: 0,
            subgroup_max_size: 0,
            shader_f16: false,
            timestamp_query: true,
            max_workgroup_storage_bytes: 16384,
            max_storage_buffer_binding_bytes: 1 << 27,
        },
        timing: "gpu-timestamps".into(),
        options: quick_options(),
        roofline: kernels::Roofline {
            copy_buffer_gb_per_s: 10.0,
            copy_shader_gb_per_s: 4.0,
            ..Default::default()
        },
        kernels,
        decoder: Vec::new(),
        paper: Vec::new(),
    }
}

#[test]
fn schema_round_trip_and_version_check() {
    let r = synthetic("GPU A", "vulkan", 0.25);
    let json = r.to_json();
    assert_eq!(Report::from_json("a.json", &json).unwrap(), r);
    let newer = json.replace("\"schema_version\": 1", "\"schema_version\": 2");
    let err = Report::from_json("a.json", &newer).unwrap_err();
    assert!(err.to_string().contains("schema version"), "{err}");
    assert!(
        Report::from_json("b.json", "{")
            .unwrap_err()
            .to_string()
            .contains("b.json")
    );
    assert_eq!(r.slug(), "gpu-a-vulkan");
}

#[test]
fn merge_puts_every_adapter_in_one_table_and_chart() {
    let reports = [
        synthetic("GPU A", "vulkan", 0.25),
        synthetic("GPU B", "metal", 0.5),
    ];
    let (md, svg) = merge(&reports);
    assert!(
        md.contains("| GPU A | vulkan |") && md.contains("| GPU B | metal |"),
        "{md}"
    );
    assert!(md.contains("25.0%") && md.contains("50.0%"), "{md}");
    assert!(svg.contains("GPU A (vulkan)") && svg.contains("GPU B (metal)"));
}

#[test]
fn check_rejects_impossible_figures() {
    let mut r = synthetic("GPU A", "vulkan", 0.25);
    r.check().unwrap();
    r.kernels[0].gb_per_s = f64::NAN;
    assert!(r.check().unwrap_err().contains("wht_fast"));
    r.kernels[0].gb_per_s = 1.0;
    r.kernels[0].time.min_s = 5e-3; // min above the median
    assert!(r.check().is_err());
}

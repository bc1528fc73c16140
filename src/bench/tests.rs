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
        environment: Environment::native(),
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
fn native_reports_name_the_commit_they_were_built_from() {
    // build.rs records HEAD at compile time and reruns when HEAD moves, so in a checkout
    // the two agree; a copy of the binary run elsewhere keeps its own commit.
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let Some(head) = head else {
        // A source tarball: nothing to name.
        assert_eq!(Environment::native().git_commit, None);
        return;
    };
    assert_eq!(Environment::native().git_commit, Some(head));
}

#[test]
fn merge_puts_every_adapter_in_one_table_and_chart() {
    let mut decoder_only = synthetic("GPU C", "dx12", 0.75);
    decoder_only.kernels.clear();
    let reports = [
        synthetic("GPU A", "vulkan", 0.25),
        synthetic("GPU B", "metal", 0.5),
        decoder_only,
    ];
    let (md, svg) = merge(&reports);
    assert!(
        md.contains("| GPU A | vulkan |")
            && md.contains("| GPU B | metal |")
            && md.contains("| GPU C | dx12 |"),
        "{md}"
    );
    assert!(md.contains("25.0%") && md.contains("50.0%"), "{md}");
    assert!(svg.contains("GPU A (vulkan)") && svg.contains("GPU B (metal)"));
    // No kernel rows, no bars: the chart's legend leaves it out.
    assert!(!svg.contains("GPU C"), "{svg}");
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

mod weight_formats {
    use super::super::decoder::{WEIGHT_FORMATS, decoder_cases};
    use super::*;
    use crate::model::{AttnOutput, Query};
    use crate::ops::WeightFormat;

    #[test]
    fn d_model_4096_fits_a_128_mib_binding_its_matrices_split_by_rows() {
        use super::super::decoder::paper_cells;
        use crate::model::sizes::{BufferLimits, planned_buffers};
        let webgpu_default = BufferLimits {
            max_storage_buffer_binding_size: 128 << 20,
            max_buffer_size: 256 << 20,
        };
        let cells = |weights| {
            paper_cells(&BenchOptions {
                weights,
                ..BenchOptions::new(vec![Suite::Paper], false)
            })
        };
        for weights in [WeightFormat::F16, WeightFormat::Q4] {
            let cell = cells(weights)
                .into_iter()
                .find(|c| (c.d_model, c.batch, c.context) == (4096, 1, 128))
                .expect("the full grid has d_model 4096");
            for attn_output in [AttnOutput::Dense, AttnOutput::Hadamard] {
                let case = cell.case(attn_output);
                case.check_fits(webgpu_default).unwrap();
                // gate + up: 2 x 12288 x 4096 x 2 bytes = 192 MiB in f16, two bindings'
                // worth; 18 / 32 bytes a weight in q4, 54 MiB.
                let config = case.config();
                let buffers = planned_buffers(&config, weights, 1, 128, case.kv_cache);
                let gate_up = buffers
                    .iter()
                    .find(|b| b.0.ends_with("layers.0.mlp.gate_up"));
                let want = match weights {
                    WeightFormat::F16 => 2 * 12288 * 4096 * 2,
                    _ => 2 * 12288 * 4096 / 32 * 18,
                };
                assert_eq!(gate_up.map(|b| b.1), Some(want));
            }
        }
        // Batch 16 x context 2048 of f16 keys (256 MiB), which does not split, fits in
        // neither.
        for weights in [WeightFormat::F16, WeightFormat::Q4] {
            let big = cells(weights)
                .into_iter()
                .find(|c| (c.d_model, c.batch, c.context) == (4096, 16, 2048))
                .unwrap();
            let e = big
                .case(AttnOutput::Hadamard)
                .check_fits(webgpu_default)
                .unwrap_err();
            assert_eq!(e.bytes, 16 * 2048 * 4096 * 2);
        }
    }

    #[test]
    fn the_decoder_suite_runs_the_hadamard_model_in_every_format() {
        for weights in WEIGHT_FORMATS {
            let options = BenchOptions {
                weights,
                ..quick_options()
            };
            let cases = decoder_cases(&options);
            let hadamard: Vec<WeightFormat> = cases
                .iter()
                .filter(|c| c.attn_output == AttnOutput::Hadamard && c.query == Query::Dense)
                .map(|c| c.weights)
                .collect();
            let mut sorted = hadamard.clone();
            sorted.sort_by_key(|w| w.name());
            assert_eq!(
                sorted,
                [WeightFormat::F16, WeightFormat::Q4, WeightFormat::Q8]
            );
            // The variants run in the chosen format; two more cases compare the others.
            assert_eq!(cases.len(), 7);
            assert!(cases[..5].iter().all(|c| c.weights == weights));
        }
    }

    #[test]
    fn kv_groups_add_grouped_rows_and_cells_only_when_asked() {
        use super::super::decoder::paper_cells;
        let full = BenchOptions::new(vec![Suite::Decoder, Suite::Paper], false);
        let grouped = BenchOptions {
            kv_groups: vec![4, 8],
            ..full.clone()
        };
        // By default nothing is grouped: the suites' rows and runtimes stay as they were.
        let plain = decoder_cases(&full);
        assert_eq!(plain.len(), 7);
        assert!(
            plain
                .iter()
                .all(|c| c.config().num_key_value_heads.is_none())
        );
        assert_eq!(paper_cells(&full).len(), 8 * 3 * 3);
        assert!(paper_cells(&full).iter().all(|c| c.kv_group == 1));
        // --min-d-model and --max-d-model select a band of widths, both ends included.
        let band = BenchOptions {
            min_d_model: 960,
            max_d_model: 2048,
            ..full.clone()
        };
        let mut widths: Vec<usize> = paper_cells(&band).iter().map(|c| c.d_model).collect();
        widths.dedup();
        assert_eq!(widths, [960, 1024, 2048]);
        // --min-batch keeps the batches from it up: one width's batch-16 cells alone.
        let big = BenchOptions {
            min_d_model: 4096,
            min_batch: 16,
            max_context: 128,
            ..full.clone()
        };
        let cells: Vec<(usize, usize, usize)> = paper_cells(&big)
            .iter()
            .map(|c| (c.d_model, c.batch, c.context))
            .collect();
        assert_eq!(cells, [(4096, 16, 128)]);
        // --min-context keeps the contexts from it up: the long contexts alone.
        let long = BenchOptions {
            max_d_model: 256,
            min_context: 512,
            ..full.clone()
        };
        let cells: Vec<(usize, usize, usize)> = paper_cells(&long)
            .iter()
            .map(|c| (c.d_model, c.batch, c.context))
            .collect();
        assert_eq!(
            cells,
            [
                (256, 1, 512),
                (256, 1, 2048),
                (256, 4, 512),
                (256, 4, 2048),
                (256, 16, 512),
                (256, 16, 2048)
            ]
        );
        // d 512: 8 heads of 64 on 2 KV heads (4:1) and on 1 (8:1), dense and Hadamard.
        let cases = decoder_cases(&grouped);
        assert_eq!(cases.len(), 7 + 4);
        let kv: Vec<(AttnOutput, usize, Option<usize>, String)> = cases[7..]
            .iter()
            .map(|c| {
                let config = c.config();
                assert!(c.groups_evenly());
                config.validate().unwrap();
                (
                    c.attn_output,
                    config.num_attention_heads,
                    config.num_key_value_heads,
                    c.variant(),
                )
            })
            .collect();
        assert_eq!(
            kv,
            [
                (AttnOutput::Dense, 8, Some(2), "dense/dense gqa 8:2".into()),
                (
                    AttnOutput::Hadamard,
                    8,
                    Some(2),
                    "hadamard/dense gqa 8:2".into()
                ),
                (AttnOutput::Dense, 8, Some(1), "dense/dense gqa 8:1".into()),
                (
                    AttnOutput::Hadamard,
                    8,
                    Some(1),
                    "hadamard/dense gqa 8:1".into()
                ),
            ]
        );
        // Quick, d 128: at least as many heads as the grouping (4 of 32, 8 of 16), one KV head.
        let quick = BenchOptions {
            kv_groups: vec![4, 8],
            ..quick_options()
        };
        let heads: Vec<(usize, usize)> = decoder_cases(&quick)[7..]
            .iter()
            .map(|c| (c.config().num_attention_heads, c.config().kv_heads()))
            .collect();
        assert_eq!(heads, [(4, 1), (4, 1), (8, 1), (8, 1)]);
        // The paper grid again per grouping, at the widths whose heads it divides: 4:1
        // leaves out 576 (9 heads) and 960 (15), 8:1 also 2304 (36).
        let cells = paper_cells(&grouped);
        let widths = |g: usize| -> Vec<usize> {
            let mut w: Vec<usize> = cells
                .iter()
                .filter(|c| c.kv_group == g)
                .map(|c| c.d_model)
                .collect();
            w.dedup();
            w
        };
        assert_eq!(widths(1), [256, 512, 576, 960, 1024, 2048, 2304, 4096]);
        assert_eq!(widths(4), [256, 512, 1024, 2048, 2304, 4096]);
        assert_eq!(widths(8), [256, 512, 1024, 2048, 4096]);
        assert!(cells.iter().any(|c| c.label().ends_with("gqa 8:1")));
    }

    #[test]
    fn reports_before_weight_formats_read_as_f16_and_q4_reports_have_their_own_files() {
        let r = synthetic("GPU A", "vulkan", 0.25);
        let mut value: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        value["options"].as_object_mut().unwrap().remove("weights");
        let old = Report::from_json("old.json", &value.to_string()).unwrap();
        assert_eq!(old.options.weights, WeightFormat::F16);
        assert_eq!(old.slug(), "gpu-a-vulkan");
        let q4 = Report {
            options: BenchOptions {
                weights: WeightFormat::Q4,
                ..quick_options()
            },
            ..r
        };
        assert_eq!(q4.slug(), "gpu-a-vulkan-q4");
        assert!(q4.to_markdown().contains("q4 weights"));
        let files: Vec<String> = report::files(&q4).into_iter().map(|f| f.0).collect();
        assert!(
            files.contains(&"gpu-a-vulkan-q4.json".to_string()),
            "{files:?}"
        );
    }
}

#[test]
fn a_paper_cells_middle_half_spans_its_quartile_pairs() {
    use super::report::middle_half;
    assert_eq!(middle_half(&[]), "-");
    // Three pairs: all of them, whatever their order.
    assert_eq!(middle_half(&[0.05, -0.1, 0.02]), "-10.0..+5.0%");
    // Seven pairs: ranks 1 and 5 of 0..6 (sorted), the extremes left out.
    let seven = [0.3, -0.2, 0.01, 0.02, 0.03, 0.04, -0.01];
    assert_eq!(middle_half(&seven), "-1.0..+4.0%");
}

#[test]
fn a_paper_round_decodes_whole_chunks_within_its_new_tokens() {
    use super::decoder::{PAPER_CHUNK_STEPS, paper_chunks};
    // The full grid's 32 new tokens: the prefill makes the first, 7 chunks of 4 of the
    // other 31.
    assert_eq!(PAPER_CHUNK_STEPS, 4);
    assert_eq!(paper_chunks(32), (7, 4));
    // --quick's 4: one chunk of the 3 left; fewer still: one step, never zero chunks.
    assert_eq!(paper_chunks(4), (1, 3));
    assert_eq!(paper_chunks(2), (1, 1));
    for new in 2..40 {
        let (chunks, steps) = paper_chunks(new);
        assert!(
            chunks * steps < new,
            "{new}: {chunks} x {steps} steps after the prefill"
        );
    }
}

/// A width bound below the kernel suite's smallest width is named (the CLI and the page
/// refuse it); a bound that keeps a width, or a run without the suite, is not.
#[test]
fn a_bound_that_empties_the_kernel_suite_names_its_smallest_width() {
    let with = |suites: Vec<Suite>, quick, max_kernel_n| BenchOptions {
        max_kernel_n,
        ..BenchOptions::new(suites, quick)
    };
    let bounded_out = kernels::smallest_width_bounded_out;
    assert_eq!(
        bounded_out(&with(vec![Suite::Kernels], false, 255)),
        Some(256)
    );
    assert_eq!(
        bounded_out(&with(vec![Suite::Kernels], true, 100)),
        Some(256)
    );
    assert_eq!(bounded_out(&with(vec![Suite::Kernels], false, 256)), None);
    assert_eq!(bounded_out(&with(vec![Suite::Decoder], false, 100)), None);
}

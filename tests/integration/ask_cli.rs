//! `lookout ask` as a user runs it, on the committed SmolVLM2 fixture and the real ONNX Runtime: answers
//! with confidence and timings, and a clear error with a distinct exit code for every bad input the model
//! stage can meet (a broken runtime, a broken model folder, odd images, bad questions).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/smolvlm-micro")
}

fn image(name: &str) -> PathBuf {
    fixture().join("images").join(name)
}

fn ask(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lookout"));
    command
        .arg("ask")
        .args(args)
        .env("LOOKOUT_LOG", "warn")
        .env_remove("LOOKOUT_CONFIG");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

fn ask_fixture(image: &Path, extra: &[&str], question: &str) -> Output {
    let model = fixture();
    let mut args = vec![
        "--image",
        image.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.push(question);
    ask(&args, &[])
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "{}", stderr(output));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("{error}: {}", String::from_utf8_lossy(&output.stdout)))
}

#[test]
fn answers_with_confidence_tokens_and_timings() {
    let text = json(&ask_fixture(
        &image("square_300.png"),
        &["--json", "--max-new-tokens", "6"],
        "What is here?",
    ));
    assert!(text["answer"].is_string());
    assert_eq!(text["tokens"].as_array().unwrap().len(), 6);
    let confidence = text["confidence"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&confidence));
    for stage in ["preprocess", "vision", "prefill", "decode"] {
        assert!(
            text["timings_ms"][stage].as_f64().unwrap() >= 0.0,
            "{stage}"
        );
    }
    let yes_no = json(&ask_fixture(
        &image("square_300.png"),
        &["--json", "--kind", "yes_no", "--split"],
        "Anyone there?",
    ));
    assert!(["yes", "no"].contains(&yes_no["answer"].as_str().unwrap()));
    let one_of = json(&ask_fixture(
        &image("tall_180x900.png"),
        &["--json", "--kind", "one_of:cat,dog,bird"],
        "Which animal?",
    ));
    assert!(["cat", "dog", "bird"].contains(&one_of["answer"].as_str().unwrap()));
    let plain = ask_fixture(
        &image("tiny_1x1.png"),
        &["--max-new-tokens", "3"],
        "Describe it.",
    );
    assert!(plain.status.success(), "{}", stderr(&plain));
    assert!(String::from_utf8_lossy(&plain.stdout).contains("timings: preprocess"));
}

#[test]
fn odd_images_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let panorama = dir.path().join("panorama.png");
    image::RgbImage::from_fn(20_000, 100, |x, _| image::Rgb([(x % 256) as u8, 90, 200]))
        .save(&panorama)
        .unwrap();
    let deep = dir.path().join("sixteen-bit.png");
    image::ImageBuffer::<image::Luma<u16>, _>::from_fn(40, 30, |x, y| {
        image::Luma([(x * y * 50) as u16])
    })
    .save(&deep)
    .unwrap();
    let cmyk = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cmyk.jpg");
    for path in [
        panorama.as_path(),
        deep.as_path(),
        cmyk.as_path(),
        image("tiny_1x1.png").as_path(),
        image("rgba_320x240.png").as_path(),
    ] {
        for split in ["--split", "--no-split"] {
            let answer = json(&ask_fixture(
                path,
                &["--json", "--max-new-tokens", "2", split],
                "What is it?",
            ));
            assert!(
                answer["image"]["width"].as_u64().unwrap() >= 1,
                "{}",
                path.display()
            );
        }
    }
}

#[test]
fn bad_questions_and_images_are_refused_clearly() {
    let empty = ask_fixture(&image("square_300.png"), &[], "   ");
    assert_eq!(empty.status.code(), Some(64));
    assert!(stderr(&empty).contains("the question is empty"));
    let huge = ask_fixture(&image("square_300.png"), &[], &"why ".repeat(25_000));
    assert_eq!(huge.status.code(), Some(64));
    assert!(stderr(&huge).contains("characters"), "{}", stderr(&huge));
    let labels = ask_fixture(
        &image("square_300.png"),
        &["--kind", "one_of:only"],
        "Which?",
    );
    assert_eq!(labels.status.code(), Some(64));

    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.jpg");
    std::fs::write(&text, "not a picture").unwrap();
    let not_image = ask_fixture(&text, &[], "What?");
    assert_eq!(not_image.status.code(), Some(65));
    let missing = ask_fixture(&dir.path().join("nope.png"), &[], "What?");
    assert_eq!(missing.status.code(), Some(65));
}

/// A copy of the fixture model that a test may break.
fn model_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::create_dir(dir.path().join("onnx")).unwrap();
    for entry in std::fs::read_dir(fixture().join("onnx")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(
            &path,
            dir.path().join("onnx").join(path.file_name().unwrap()),
        )
        .unwrap();
    }
    dir
}

fn ask_model(model: &Path, env: &[(&str, &str)]) -> Output {
    ask(
        &[
            "--image",
            image("square_300.png").to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "What?",
        ],
        env,
    )
}

fn assert_unavailable(output: &Output, needle: &str) {
    assert_eq!(output.status.code(), Some(69), "{}", stderr(output));
    assert!(
        stderr(output).contains(needle),
        "{needle:?} not in: {}",
        stderr(output)
    );
    assert!(!stderr(output).contains("panicked"), "{}", stderr(output));
}

#[test]
fn a_broken_model_folder_is_named_in_the_error() {
    // `ask` loads the fastest variant the folder holds, int8 (the folder has int8 and fp32).
    let missing_graph = model_copy();
    std::fs::remove_file(
        missing_graph
            .path()
            .join("onnx/decoder_model_merged_int8.onnx"),
    )
    .unwrap();
    assert_unavailable(
        &ask_model(missing_graph.path(), &[("LOOKOUT_VARIANT", "int8")]),
        "has no int8 variant; it holds: fp32",
    );

    let truncated = model_copy();
    let graph = truncated.path().join("onnx/vision_encoder_int8.onnx");
    let bytes = std::fs::read(&graph).unwrap();
    std::fs::write(&graph, &bytes[..bytes.len() / 3]).unwrap();
    assert_unavailable(
        &ask_model(truncated.path(), &[]),
        "vision_encoder_int8.onnx",
    );

    let other_model = model_copy();
    std::fs::copy(
        other_model.path().join("onnx/embed_tokens_int8.onnx"),
        other_model
            .path()
            .join("onnx/decoder_model_merged_int8.onnx"),
    )
    .unwrap();
    assert_unavailable(
        &ask_model(other_model.path(), &[]),
        "no input named \"inputs_embeds\"",
    );

    let no_image_token = model_copy();
    let tokenizer = no_image_token.path().join("tokenizer.json");
    let text = std::fs::read_to_string(&tokenizer)
        .unwrap()
        .replace("\"<image>\"", "\"<picture>\"");
    std::fs::write(&tokenizer, text).unwrap();
    assert_unavailable(&ask_model(no_image_token.path(), &[]), "no <image> token");

    let no_tokenizer = model_copy();
    std::fs::remove_file(no_tokenizer.path().join("tokenizer.json")).unwrap();
    assert_unavailable(&ask_model(no_tokenizer.path(), &[]), "tokenizer.json");

    assert_unavailable(
        &ask_model(Path::new("/nonexistent/model"), &[]),
        "no model in /nonexistent/model",
    );
}

#[test]
fn a_missing_or_old_runtime_is_a_one_line_error() {
    let missing = ask_model(
        &fixture(),
        &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")],
    );
    assert_unavailable(&missing, "no ONNX Runtime library found");

    let not_a_library = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_a_library.path(), "not a shared object").unwrap();
    assert_unavailable(
        &ask_model(
            &fixture(),
            &[("ORT_DYLIB_PATH", not_a_library.path().to_str().unwrap())],
        ),
        "cannot load ONNX Runtime",
    );

    let old = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ort/old/lib/libonnxruntime.so");
    assert!(
        old.exists(),
        "{} is missing: run `make test-deps`",
        old.display()
    );
    let refused = ask_model(&fixture(), &[("ORT_DYLIB_PATH", old.to_str().unwrap())]);
    assert_unavailable(&refused, "1.22");
}

/// `lookout bench` with the fixture's extra arguments `args`.
fn bench(args: &[&str]) -> Output {
    let model = fixture();
    Command::new(env!("CARGO_BIN_EXE_lookout"))
        .args(["bench", "--model", model.to_str().unwrap(), "--runs", "1"])
        .args(["--max-new-tokens", "4"])
        .args(args)
        .env("LOOKOUT_LOG", "warn")
        .env_remove("LOOKOUT_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn bench_reports_every_stage_and_the_cost_of_several_questions() {
    let report = json(&bench(&["--json"]));
    let fields = [
        "preprocess_alone_ms",
        "ttft_ms",
        "decode_tokens_per_s",
        "answer_ms",
        "peak_rss_mb",
    ];
    for field in fields {
        assert!(report[field].as_f64().unwrap() > 0.0, "{field}: {report}");
    }
    let kernel = report["resampling_kernel"].as_str().unwrap_or_default();
    assert!(
        ["AVX-512", "AVX2", "portable"].contains(&kernel),
        "resampling_kernel: {report}"
    );
    // The figures themselves are for bench/compare.sh to judge; here they must exist and be sane.
    for ratio in ["three_yes_no_ratio", "three_text_ratio"] {
        let value = report[ratio].as_f64().unwrap();
        assert!(value.is_finite() && value > 0.0, "{ratio} = {value}");
    }
}

#[test]
fn bench_compares_with_another_variant_in_the_same_process() {
    let report = json(&bench(&[
        "--variant",
        "int8",
        "--against-variant",
        "fp32",
        "--json",
    ]));
    let against = &report["against"];
    assert_eq!(against["rounds"], 1, "{report}");
    assert_ne!(against["model"], report["model"], "{report}");
    assert!(
        against["decoder"]
            .as_str()
            .unwrap()
            .ends_with("decoder_model_merged.onnx"),
        "{report}"
    );
    for ratio in ["decode_ratio", "ttft_ratio", "prefill_ratio"] {
        let value = against[ratio].as_f64().unwrap();
        assert!(value.is_finite() && value > 0.0, "{ratio} = {value}");
    }
    // Without a setup to compare with, there is no comparison.
    let alone = json(&bench(&["--variant", "int8", "--json"]));
    assert!(alone.get("against").is_none(), "{alone}");
}

#[test]
fn bench_compares_with_the_model_of_another_folder() {
    // Another folder holding the same files (as one another version of Lookout built would).
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-micro");
    std::fs::create_dir(&other).unwrap();
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let entry = entry.unwrap();
        std::os::unix::fs::symlink(entry.path(), other.join(entry.file_name())).unwrap();
    }
    let report = json(&bench(&[
        "--variant",
        "int8",
        "--against-model",
        other.to_str().unwrap(),
        "--json",
    ]));
    let against = &report["against"];
    assert!(
        against["model"]
            .as_str()
            .unwrap()
            .starts_with("other-micro"),
        "{report}"
    );
    assert!(
        against["decoder"]
            .as_str()
            .unwrap()
            .starts_with(other.to_str().unwrap()),
        "{report}"
    );
    for ratio in ["decode_ratio", "ttft_ratio", "prefill_ratio"] {
        let value = against[ratio].as_f64().unwrap();
        assert!(value.is_finite() && value > 0.0, "{ratio} = {value}");
    }
}

#[test]
fn bench_refuses_an_unknown_setup_to_compare_with_and_keeps_its_own_report() {
    let graphs = bench(&["--against-graphs", "fastest"]);
    assert_eq!(graphs.status.code(), Some(64), "{}", stderr(&graphs));
    assert!(
        stderr(&graphs).contains("unknown graphs \"fastest\"; expected lookout or official"),
        "{}",
        stderr(&graphs)
    );
    // A variant the folder lacks: the benched model's report is still printed.
    let missing = bench(&["--variant", "int8", "--against-variant", "q4", "--json"]);
    assert_eq!(missing.status.code(), Some(69), "{}", stderr(&missing));
    assert!(stderr(&missing).contains("q4"), "{}", stderr(&missing));
    let report: serde_json::Value = serde_json::from_slice(&missing.stdout).unwrap();
    assert!(
        report["decode_tokens_per_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    // A folder that is not there: named, and the report still printed.
    let absent = bench(&["--against-model", "/nonexistent/model", "--json"]);
    assert_eq!(absent.status.code(), Some(69), "{}", stderr(&absent));
    assert!(
        stderr(&absent).contains("/nonexistent/model"),
        "{}",
        stderr(&absent)
    );
    assert!(serde_json::from_slice::<serde_json::Value>(&absent.stdout).is_ok());
}

#[test]
fn a_folder_of_frames_of_different_sizes_is_answered_as_one_clip() {
    let model = fixture();
    let images = fixture().join("images");
    let output = ask(
        &[
            "--model",
            model.to_str().unwrap(),
            "--json",
            "--max-new-tokens",
            "4",
            "--frame-interval",
            "2.5",
            "--video-frames",
            images.to_str().unwrap(),
            image("square_300.png").to_str().unwrap(),
            "What happened?",
        ],
        &[],
    );
    let answer = json(&output);
    assert_eq!(answer["tokens"].as_array().unwrap().len(), 4, "{answer}");
    let clip = &answer["clip"];
    let frames = clip["frames"].as_array().unwrap();
    // The folder's six images in name order, then the file given after it.
    let files: Vec<&str> = frames
        .iter()
        .map(|frame| {
            Path::new(frame["file"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
        })
        .collect();
    assert_eq!(
        files,
        [
            "gray_256x192.png",
            "panorama_1200x160.png",
            "rgba_320x240.png",
            "square_300.png",
            "tall_180x900.png",
            "tiny_1x1.png",
            "square_300.png"
        ]
    );
    let times: Vec<f64> = frames
        .iter()
        .map(|frame| frame["time_s"].as_f64().unwrap())
        .collect();
    assert_eq!(times, [0.0, 2.5, 5.0, 7.5, 10.0, 12.5, 15.0]);
    assert_eq!(clip["duration_s"], 17.5);
    assert_eq!(frames[1]["width"], 1200);
}

#[test]
fn bad_clips_are_refused_clearly() {
    let model = fixture();
    let square = image("square_300.png");
    let clip = |paths: &[&str], extra: &[&str]| {
        let mut args = vec!["--model", model.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push("--video-frames");
        args.extend_from_slice(paths);
        args.push("What happened?");
        ask(&args, &[])
    };
    let too_many = vec![square.to_str().unwrap(); 65];
    let refused = clip(&too_many, &[]);
    assert_eq!(refused.status.code(), Some(64), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("1 to 64 frames"),
        "{}",
        stderr(&refused)
    );

    for interval in ["0", "-1", "nan"] {
        let flag = format!("--frame-interval={interval}");
        let refused = clip(&[square.to_str().unwrap()], &[&flag]);
        assert_eq!(refused.status.code(), Some(64), "{}", stderr(&refused));
        assert!(
            stderr(&refused).contains("--frame-interval"),
            "{}",
            stderr(&refused)
        );
    }

    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("notes.txt"), "not a frame").unwrap();
    let refused = clip(&[empty.path().to_str().unwrap()], &[]);
    assert_eq!(refused.status.code(), Some(65), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("no PNG or JPEG files"),
        "{}",
        stderr(&refused)
    );

    let not_image = empty.path().join("notes.txt");
    let refused = clip(
        &[square.to_str().unwrap(), not_image.to_str().unwrap()],
        &[],
    );
    assert_eq!(refused.status.code(), Some(65), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("notes.txt"),
        "{}",
        stderr(&refused)
    );

    // A question with no frames, and frames with --image.
    let refused = clip(&[], &[]);
    assert_eq!(refused.status.code(), Some(64), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("these paths hold 0"),
        "{}",
        stderr(&refused)
    );
    let refused = ask(
        &[
            "--image",
            square.to_str().unwrap(),
            "--video-frames",
            square.to_str().unwrap(),
            "What?",
        ],
        &[],
    );
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
}

/// A folder holding the fixture's config files and the graphs of `variants` only.
fn model_with_variants(variants: &[&str]) -> tempfile::TempDir {
    let dir = model_copy();
    for entry in std::fs::read_dir(dir.path().join("onnx")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let variant = ["vision_encoder", "embed_tokens", "decoder_model_merged"]
            .iter()
            .find_map(|graph| name.strip_prefix(graph))
            .map(|rest| rest.trim_start_matches('_'))
            .map(|rest| if rest.is_empty() { "fp32" } else { rest })
            .unwrap();
        if !variants.contains(&variant) {
            std::fs::remove_file(&path).unwrap();
        }
    }
    dir
}

/// The variant the log says `auto` chose, and the exit status.
fn chosen_variant(model: &Path, extra: &[&str]) -> (Option<String>, Output) {
    let image = image("square_300.png");
    let mut args = vec![
        "--image",
        image.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--max-new-tokens",
        "2",
    ];
    args.extend_from_slice(extra);
    args.push("What?");
    let output = ask(&args, &[("LOOKOUT_LOG", "lookout::vision=info")]);
    let variant = stderr(&output)
        .lines()
        .filter(|line| line.contains("Chose the fastest model variant"))
        .find_map(|line| {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix("variant="))
                .map(str::to_owned)
        });
    (variant, output)
}

#[test]
fn variant_auto_takes_the_fastest_the_folder_holds() {
    let fp32_only = model_with_variants(&["fp32"]);
    let (variant, output) = chosen_variant(fp32_only.path(), &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(variant.as_deref(), Some("fp32"), "{}", stderr(&output));

    let both = model_with_variants(&["fp32", "int8"]);
    let (variant, output) = chosen_variant(both.path(), &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(variant.as_deref(), Some("int8"), "{}", stderr(&output));

    // An explicit variant is used as given, and is not announced as a choice.
    let (variant, output) = chosen_variant(both.path(), &["--variant", "fp32"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(variant, None);
}

#[test]
fn an_absent_variant_names_the_variants_present() {
    let fp32_only = model_with_variants(&["fp32"]);
    let (_, output) = chosen_variant(fp32_only.path(), &["--variant", "int8"]);
    assert_unavailable(&output, "has no int8 variant; it holds: fp32");
    let (_, output) = chosen_variant(fp32_only.path(), &["--variant", "int3"]);
    assert_eq!(output.status.code(), Some(64), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("vision.variant"),
        "{}",
        stderr(&output)
    );
    let empty = model_with_variants(&[]);
    let (_, output) = chosen_variant(empty.path(), &[]);
    assert_unavailable(&output, "has no complete variant; it holds: nothing");
}

/// Asks the fixture one short question with `config` (TOML text), in JSON, with `env` besides.
fn ask_with_config(config: &str, env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lookout.toml");
    std::fs::write(&path, config).unwrap();
    let model = fixture();
    let square = image("square_300.png");
    ask(
        &[
            "--image",
            square.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--json",
            "--max-new-tokens",
            "4",
            "--config",
            path.to_str().unwrap(),
            "What is here?",
        ],
        env,
    )
}

/// `vision.device` on the CPU-only runtime the tests use (a box with no accelerator): `auto` and `cpu`
/// answer on the CPU, say so (`runs_on`), and give the same tokens, with no warning; `gpu` and `npu`
/// cannot be honoured, a start-up error (exit 69) naming what is missing. Providers listed by hand
/// still work: each the runtime lacks is skipped with a warning naming it, and the CPU answers.
#[test]
fn the_device_asked_for_answers_or_the_start_fails_naming_what_is_missing() {
    let auto = ask_with_config("", &[]);
    assert_eq!(json(&auto)["runs_on"], "cpu");
    assert!(
        !stderr(&auto).contains("WARN"),
        "a box without accelerators needs no warning: {}",
        stderr(&auto)
    );
    let cpu = ask_with_config("[vision]\ndevice = \"cpu\"\n", &[]);
    assert_eq!(json(&cpu)["runs_on"], "cpu");
    assert_eq!(json(&cpu)["tokens"], json(&auto)["tokens"]);

    for device in ["gpu", "npu"] {
        let refused = ask_with_config(&format!("[vision]\ndevice = \"{device}\"\n"), &[]);
        assert_unavailable(
            &refused,
            &format!(
                "vision.device = \"{device}\", but this box offers no {device}: no {device} device \
                 node and no {device} provider in"
            ),
        );
        assert!(
            stderr(&refused).contains("deploy/fetch-onnxruntime.sh --gpu"),
            "{}",
            stderr(&refused)
        );
    }

    let listed = ask_with_config(
        "[vision]\nproviders = [\"cuda\", \"tensorrt\", \"openvino\", \"qnn\", \"coreml\", \"cpu\"]\n",
        &[],
    );
    for provider in ["cuda", "tensorrt", "openvino", "qnn", "coreml"] {
        assert!(
            stderr(&listed).contains(&format!(
                "This ONNX Runtime build has no such execution provider; falling back. provider=\"{provider}\""
            )),
            "{provider}: {}",
            stderr(&listed)
        );
    }
    assert_eq!(json(&listed)["runs_on"], "cpu");
    assert_eq!(json(&listed)["tokens"], json(&auto)["tokens"]);

    // Both ways at once is a config error, reported before anything is loaded.
    let both = ask_with_config(
        "[vision]\ndevice = \"gpu\"\nproviders = [\"cuda\", \"cpu\"]\n",
        &[],
    );
    assert_eq!(both.status.code(), Some(64), "{}", stderr(&both));
    assert!(
        stderr(&both).contains("vision.providers"),
        "{}",
        stderr(&both)
    );
}

/// A plugin provider library that is not there, or is not one, stops the start with its path named.
#[test]
fn a_provider_library_that_cannot_be_registered_is_named() {
    let missing = ask_with_config(
        "[vision]\nprovider_libraries = [\"/nonexistent/libonnxruntime_providers_x.so\"]\n",
        &[],
    );
    assert_unavailable(
        &missing,
        "cannot register the provider library /nonexistent/libonnxruntime_providers_x.so: the file \
         does not exist",
    );
    let not_one = fixture().join("config.json");
    let refused = ask_with_config(
        &format!(
            "[vision]\nprovider_libraries = [\"{}\"]\n",
            not_one.display()
        ),
        &[],
    );
    assert_unavailable(
        &refused,
        &format!("cannot register the provider library {}", not_one.display()),
    );
    let relative = ask_with_config("[vision]\nprovider_libraries = [\"lib/plugin.so\"]\n", &[]);
    assert_eq!(relative.status.code(), Some(64), "{}", stderr(&relative));
    assert!(
        stderr(&relative).contains("vision.provider_libraries[0]"),
        "{}",
        stderr(&relative)
    );
}

/// Where `make test-accelerators` installs the accelerator runtimes (`deploy/fetch-onnxruntime.sh --gpu
/// --openvino .ort/accelerators`): the CPU library with OpenVINO's plugin beside it, and the CUDA build.
fn accelerator_runtime(library: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".ort/accelerators")
        .join(library);
    assert!(
        path.exists(),
        "{} is missing: run make test-accelerators",
        path.display()
    );
    path.to_str().unwrap().to_owned()
}

/// The CUDA build of the runtime on a box with no NVIDIA GPU (and no driver): `auto` tries the GPU,
/// answers on the CPU after exactly one WARN that names the CUDA provider and why it cannot run, with
/// the tokens the CPU runtime gives; `gpu` exits 69 naming the missing driver; `doctor` says the same.
#[test]
#[ignore = "needs the CUDA runtime (2.5 GB): make test-accelerators"]
fn accelerator_the_cuda_runtime_without_a_gpu_answers_on_the_cpu_after_one_warning() {
    let library = accelerator_runtime("gpu/lib/libonnxruntime.so");
    let env = [("ORT_DYLIB_PATH", library.as_str())];
    let auto = ask_with_config("", &env);
    assert_eq!(json(&auto)["runs_on"], "cpu");
    let warnings: Vec<&str> = std::str::from_utf8(&auto.stderr)
        .unwrap()
        .lines()
        .filter(|line| line.contains("WARN"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("An accelerator was found but cannot answer; the CPU answers.")
            && warnings[0].contains("cuda:0 (CUDAExecutionProvider)")
            && warnings[0].contains("no NVIDIA driver (libcuda.so.1 does not load)"),
        "{}",
        warnings[0]
    );
    let on_cpu_runtime = ask_with_config("", &[]);
    assert_eq!(json(&auto)["tokens"], json(&on_cpu_runtime)["tokens"]);

    let gpu = ask_with_config("[vision]\ndevice = \"gpu\"\n", &env);
    assert_unavailable(
        &gpu,
        "vision.device = \"gpu\", but no gpu could answer: cuda:0: cannot load the graph",
    );
    assert!(
        stderr(&gpu).contains("no NVIDIA driver"),
        "{}",
        stderr(&gpu)
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gpu.toml");
    std::fs::write(&config, "[vision]\ndevice = \"gpu\"\n").unwrap();
    let model = fixture();
    let doctor = Command::new(env!("CARGO_BIN_EXE_lookout"))
        .args(["doctor", "--config", config.to_str().unwrap()])
        .env("ORT_DYLIB_PATH", &library)
        .env("LOOKOUT_MODEL_DIR", &model)
        .env("LOOKOUT_LOG", "error")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        printed.contains("accelerator providers in this runtime: cuda, tensorrt\n"),
        "{printed}"
    );
    assert_unavailable(&doctor, "no NVIDIA driver");
}

/// OpenVINO's plugin beside the CPU library is registered by itself, and the CPU keeps the graphs it
/// is given: without care ONNX Runtime's device selection hands a session that only appends the CPU
/// provider to the plugin's CPU device (on Intel CPUs, where the plugin lists one).
#[test]
#[ignore = "needs OpenVINO's plugin provider: make test-accelerators"]
fn accelerator_the_openvino_plugin_is_registered_and_the_cpu_keeps_its_graphs() {
    let library = accelerator_runtime("lib/libonnxruntime.so");
    let plugin = accelerator_runtime("lib/openvino/libonnxruntime_providers_openvino_plugin.so");
    let model = fixture();
    let doctor = Command::new(env!("CARGO_BIN_EXE_lookout"))
        .args(["doctor"])
        .env("ORT_DYLIB_PATH", &library)
        .env("LOOKOUT_MODEL_DIR", &model)
        .env("LOOKOUT_LOG", "error")
        .env_remove("LOOKOUT_CONFIG")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&doctor.stdout);
    assert!(doctor.status.success(), "{printed}{}", stderr(&doctor));
    assert!(
        printed.contains(&format!("provider libraries: {plugin}\n")),
        "{printed}"
    );
    let graphs: Vec<&str> = printed
        .lines()
        .filter(|line| line.contains(" nodes on "))
        .collect();
    assert_eq!(graphs.len(), 2, "{printed}");
    for graph in graphs {
        assert!(
            graph.ends_with(" nodes on CPUExecutionProvider, 0 fall back to the CPU"),
            "{graph}"
        );
    }
    let answered = ask_with_config("", &[("ORT_DYLIB_PATH", library.as_str())]);
    assert_eq!(json(&answered)["runs_on"], "cpu");
    assert_eq!(
        json(&answered)["tokens"],
        json(&ask_with_config("", &[]))["tokens"]
    );
}

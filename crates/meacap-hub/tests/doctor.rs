//! The `doctor` report and its text rendering.

mod common;

use common::hf_cache::{model_files, without, write_folder};
use meacap_hub::{doctor, Env, Resolver, Role, SourceKind};

#[test]
fn doctor_reports_models_banks_and_environment() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path();
    write_folder(&root.join("ck/clip-vit-base-patch32"), &model_files(Role::Clip));
    write_folder(&root.join("ck/gpt2"), &without(model_files(Role::Gpt2), &["merges.txt"]));
    write_folder(&root.join("mem/cc3m"), &model_files(Role::Memory));
    write_folder(&root.join("mem/coco"), &[("memory_captions.json".to_string(), b"[]".to_vec())]);

    let env = Env::from_pairs([
        ("HF_HUB_CACHE", root.join("hf").display().to_string()),
        ("HF_TOKEN", "hf_secret".to_string()),
        ("TRANSFORMERS_OFFLINE", "1".to_string()),
        ("HF_ENDPOINT", "http://127.0.0.1:9".to_string()),
    ]);
    let resolver = Resolver::new(env).with_checkpoints(root.join("ck")).with_memory_dir(root.join("mem"));
    let report = doctor(&resolver);

    assert!(report.offline);
    assert_eq!(report.offline_reason.as_deref(), Some("TRANSFORMERS_OFFLINE=1"));
    assert_eq!(report.endpoint, "http://127.0.0.1:9");
    assert!(!report.all_found());
    let clip = &report.models[0];
    assert_eq!(clip.found.as_ref().unwrap().source, SourceKind::Checkpoints);
    let gpt2 = &report.models[1];
    assert!(gpt2.found.is_none());
    assert!(gpt2.fix.as_deref().unwrap().contains("models fetch --only gpt2"));

    let banks: Vec<(&str, bool)> = report.memory_banks.iter().map(|b| (b.id.as_str(), b.missing.is_empty())).collect();
    assert_eq!(banks, vec![("cc3m", true), ("coco", false)]);
    assert_eq!(report.memory_banks[0].files.len(), 2);

    let token = report.environment.iter().find(|v| v.name == "HF_TOKEN").unwrap();
    assert_eq!(token.value.as_deref(), Some("(set, hidden)"));
    let unset = report.environment.iter().find(|v| v.name == "HF_HOME").unwrap();
    assert_eq!(unset.value, None);

    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["models"][0]["found"]["source"], "checkpoints");
    assert_eq!(json["models"][1]["candidates"][0]["status"], "incomplete");
    assert!(!json.to_string().contains("hf_secret"));

    let text = report.render_text();
    assert!(text.contains("[ok]      clip"), "{text}");
    assert!(text.contains("[missing] gpt2"), "{text}");
    assert!(text.contains("incomplete: missing tokenizer (tokenizer.json, or vocab.json + merges.txt)"), "{text}");
    assert!(text.contains("[partial] coco"), "{text}");
    assert!(text.contains("offline:         yes (TRANSFORMERS_OFFLINE=1)"), "{text}");
    assert!(!text.contains("hf_secret"), "{text}");
}

//! The offline guarantee at library level: resolving local models never opens a connection, in
//! offline mode or not, and `fetch` refuses in offline mode before connecting.

mod common;

use common::fake_hub::ConnectionCounter;
use common::hf_cache::{commit, model_files, write_folder, FakeCache};
use meacap_hub::{doctor, fetch, Env, FetchOptions, HubError, Resolver, Role};

fn local_setup(temp: &std::path::Path) {
    // Four roles in checkpoints/, one in the HF cache, memory in the memory dir.
    for role in [Role::Clip, Role::Parser, Role::Sbert] {
        write_folder(&temp.join("checkpoints").join(role.spec().local_name), &model_files(role));
    }
    let viecap = temp.join("checkpoints/train_coco/coco_prefix-0014.pt");
    std::fs::create_dir_all(viecap.parent().unwrap()).unwrap();
    std::fs::write(viecap, b"pt").unwrap();
    let cache = FakeCache::new(temp.join("hf/hub"));
    cache.add_snapshot("openai-community/gpt2", &commit("g"), &model_files(Role::Gpt2), true);
    cache.set_ref("openai-community/gpt2", "main", &commit("g"));
    write_folder(&temp.join("data/memory/cc3m"), &model_files(Role::Memory));
}

fn resolver(temp: &std::path::Path, endpoint: &str, offline_env: bool) -> Resolver {
    let mut env = Env::from_pairs([
        ("HF_HUB_CACHE", temp.join("hf/hub").display().to_string()),
        ("HF_ENDPOINT", endpoint.to_string()),
    ]);
    if offline_env {
        env = env.with("HF_HUB_OFFLINE", "1");
    }
    Resolver::new(env).with_checkpoints(temp.join("checkpoints")).with_memory_dir(temp.join("data/memory"))
}

#[test]
fn resolving_local_models_makes_no_connection_online_or_offline() {
    let temp = tempfile::tempdir().unwrap();
    local_setup(temp.path());
    let counter = ConnectionCounter::start();
    for (offline_env, offline_flag) in [(false, false), (true, false), (false, true)] {
        let resolver = resolver(temp.path(), &counter.endpoint(), offline_env).with_offline(offline_flag);
        let found = resolver.resolve_all(&Role::ALL).unwrap();
        assert_eq!(found.len(), 6);
        let report = doctor(&resolver);
        assert!(report.all_found(), "{}", report.render_text());
        // A miss is an error, still without any connection.
        assert!(resolver.clone().with_memory_id("absent").resolve(Role::Memory).is_err());
    }
    assert_eq!(counter.count(), 0, "resolution must never connect");
}

#[test]
fn fetch_refuses_offline_without_connecting() {
    let temp = tempfile::tempdir().unwrap();
    let counter = ConnectionCounter::start();
    let base = Env::from_pairs([("HF_ENDPOINT", counter.endpoint())]);
    let mut options = FetchOptions::new(temp.path().join("checkpoints"));
    options.progress = false;

    for var in ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"] {
        let error = fetch(&base.clone().with(var, "yes"), &options).unwrap_err();
        assert!(matches!(error, HubError::Offline { .. }), "{error:?}");
        let text = error.to_string();
        assert!(text.contains(&format!("offline mode is on ({var}=yes)")), "{text}");
        assert!(text.contains("clip, gpt2, parser, sbert, memory"), "{text}");
    }
    options.offline = true;
    let error = fetch(&base, &options).unwrap_err();
    assert!(error.to_string().contains("(--offline)"), "{error}");

    assert_eq!(counter.count(), 0, "offline fetch must not connect");
    assert!(!temp.path().join("checkpoints").exists(), "offline fetch must not create folders");
}

/// Guards the counter itself: a real request is seen.
#[test]
fn connection_counter_counts() {
    let counter = ConnectionCounter::start();
    let temp = tempfile::tempdir().unwrap();
    let mut options = FetchOptions::new(temp.path());
    options.progress = false;
    options.retries = 0;
    options.roles = vec![Role::Gpt2];
    let env = Env::from_pairs([("HF_ENDPOINT", counter.endpoint())]);
    assert!(fetch(&env, &options).is_err());
    assert!(counter.count() >= 1);
}

//! The concept logic against the Python port of the original (tests/reference/concept_cases.py,
//! `utils/parse_tool.py` with first-occurrence order in place of `set`): hand-made graph sets that
//! exercise attribute prefixes, number words, 1-ary segments, comma predicates, empty parses,
//! substring and code-point positions, a 10-pair merge chain and the 4-concept cut.

mod common;

use common::json;
use meacap::concepts::{count_entities, merge_and_rank};

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn check_case(case: &serde_json::Value, graphs: &[String], captions: &[String], name: &str) {
    let counts = count_entities(graphs);
    let per_caption: Vec<Vec<String>> = case["per_caption_entities"].as_array().unwrap().iter().map(strings).collect();
    assert_eq!(counts.caption_entities, per_caption, "{name}: per-caption entities");
    let want_counts: Vec<(String, usize)> = case["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_u64().unwrap() as usize))
        .collect();
    let got_counts: Vec<(String, usize)> = counts.counts.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(got_counts, want_counts, "{name}: counts");
    let similarity: Vec<Vec<f32>> = case["sbert_similarity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect();
    let out = merge_and_rank(counts, &similarity, captions).unwrap();
    let pairs: Vec<(String, String)> = out.merge_pairs.iter().map(|p| (p.entity.clone(), p.similar.clone())).collect();
    let want_pairs: Vec<(String, String)> = case["merge_pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(pairs, want_pairs, "{name}: merge pairs");
    assert_eq!(out.kept, strings(&case["kept"]), "{name}: kept");
    let positions: Vec<(String, f64)> = out.ranked.iter().map(|r| (r.entity.clone(), r.relative_pos)).collect();
    let want_positions: Vec<(String, f64)> = case["relative_pos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_f64().unwrap()))
        .collect();
    // serde_json (without its float_roundtrip feature) parses decimals to within 1 ulp, so the
    // comparison allows 2 ulp; the computation itself reproduces np.mean to the bit.
    assert_eq!(positions.len(), want_positions.len(), "{name}: ranked entities");
    for ((entity, pos), (want_entity, want_pos)) in positions.iter().zip(&want_positions) {
        assert_eq!(entity, want_entity, "{name}: ranking order");
        assert!((pos - want_pos).abs() <= 2.0 * f64::EPSILON * want_pos.abs(), "{name}: {entity} position {pos} vs {want_pos}");
    }
    assert_eq!(out.concepts, strings(&case["concepts"]), "{name}: concepts");
}

#[test]
fn hand_made_cases_match_the_original_logic() {
    let cases = json("concepts.json");
    for case in cases["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        check_case(case, &strings(&case["graphs"]), &strings(&case["captions"]), name);
    }
}

/// The same checks on the concept stage of every pipeline image (real parser output).
#[test]
fn pipeline_cases_match_the_original_logic() {
    let pipeline = json("pipeline.json");
    for image in pipeline["images"].as_array().unwrap() {
        let name = image["image"].as_str().unwrap();
        check_case(image, &strings(&image["parser_formatted"]), &strings(&image["memory_captions"]), name);
    }
}

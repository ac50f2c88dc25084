//! The concept rules of MeaCap's `retrieve_concepts` on hand-written scene graphs. Expected values
//! were checked against the original `utils/parse_tool.py` (with `list(set(..))` replaced by
//! `list(dict.fromkeys(..))`, the one deliberate deviation) run on the same inputs.

use meacap::concepts::*;
use meacap::{Error, Result};

const DIM: usize = 16;

/// SentenceBERT stand-in: the given vectors (zero-padded to `DIM`); every other entity gets its
/// own basis vector, orthogonal to everything else.
fn embedder<'a>(vectors: &'a [(&'a str, &'a [f32])]) -> impl FnMut(&[String]) -> Result<Vec<Vec<f32>>> + 'a {
    move |entities: &[String]| {
        let mut next_basis = 0;
        Ok(entities
            .iter()
            .map(|entity| {
                let mut embedding = vec![0.0f32; DIM];
                match vectors.iter().find(|(name, _)| name == entity) {
                    Some((_, values)) => embedding[..values.len()].copy_from_slice(values),
                    None => {
                        embedding[DIM - 1 - next_basis] = 1.0;
                        next_basis += 1;
                    }
                }
                embedding
            })
            .collect())
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| item.to_string()).collect()
}

fn run(graphs: &[&str], captions: &[&str], vectors: &[(&str, &[f32])]) -> Concepts {
    let formatted: Vec<String> = graphs.iter().map(|graph| format_scene_graph(graph)).collect();
    retrieve_concepts(&formatted, &strings(captions), embedder(vectors)).expect("concepts")
}

fn pairs<V: Clone>(map: &OrderedMap<V>) -> Vec<(String, V)> {
    map.iter().map(|(key, value)| (key.to_string(), value.clone())).collect()
}

fn counted(items: &[(&str, usize)]) -> Vec<(String, usize)> {
    items.iter().map(|(key, count)| (key.to_string(), *count)).collect()
}

fn attributes(graph: &SceneGraph, entity: &str) -> Vec<(String, usize)> {
    pairs(&graph.get(entity).expect("node").attribute)
}

// --- Parser input and output text -----------------------------------------------------------

#[test]
fn parser_input_has_the_prefix_with_its_space() {
    assert_eq!(PARSER_PREFIX, "Generate Scene Graph: ");
    assert_eq!(parser_input("A dog on grass."), "Generate Scene Graph: A dog on grass.");
}

#[test]
fn format_removes_every_prefix_and_spaces_the_punctuation() {
    assert_eq!(
        format_scene_graph("Generate Scene Graph: ( pigs,is,2 ),(bags , on back of ,pigs)"),
        "( pigs , is , 2 ) , ( bags , on back of , pigs )"
    );
    assert_eq!(format_scene_graph("(a,is,b)Generate Scene Graph:(c)"), "( a , is , b ) ( c )");
    // Python's whitespace: tabs, newlines, NBSP and the U+001C..U+001F separators all collapse.
    assert_eq!(format_scene_graph(" \t( urban\u{a0}park\u{1f})\n"), "( urban park )");
    assert_eq!(format_scene_graph(""), "");
    assert_eq!(format_scene_graph("Generate Scene Graph:"), "");
    let formatted = "( dog , on , grass ) , ( sky , is , blue )";
    assert_eq!(format_scene_graph(formatted), formatted);
}

#[test]
fn segments_split_on_the_literal_separator() {
    assert_eq!(split_segments("( a , is , b ) , ( c , on , d )"), strings(&["a , is , b", "c , on , d"]));
    assert_eq!(split_segments("(urban park)"), strings(&["urban park"]));
    assert_eq!(split_segments(""), strings(&[""]));
    assert_eq!(segment_items("man , in front , of , car"), strings(&["man", "in front", "of", "car"]));
}

// --- Per-caption rules ----------------------------------------------------------------------

#[test]
fn one_item_segment_alone_is_an_entity() {
    let caption = caption_graph("( urban park )");
    assert_eq!(caption.entities, strings(&["urban park"]));
    let node = caption.graph.get("urban park").expect("node");
    assert!(node.relation.is_empty() && node.attribute.is_empty());
    assert_eq!(node.count, 1);
}

#[test]
fn one_item_segment_among_others_is_ignored() {
    let caption = caption_graph("( dog , on , grass ) , ( park )");
    assert_eq!(caption.entities, strings(&["dog", "grass"]));
    assert!(!caption.graph.contains_key("park"));
}

#[test]
fn two_items_are_entity_and_attribute() {
    let caption = caption_graph("( dog , brown ) , ( dog , small ) , ( dog , brown )");
    assert_eq!(caption.entities, strings(&["dog"]));
    // Within a caption an attribute is set to 1, however often it appears.
    assert_eq!(attributes(&caption.graph, "dog"), counted(&[("brown", 1), ("small", 1)]));
}

#[test]
fn three_items_with_is_make_an_attribute() {
    let caption = caption_graph("( dog , is , brown ) , ( dog , is , big ) , ( dog , is , brown )");
    assert_eq!(caption.entities, strings(&["dog"]));
    assert_eq!(attributes(&caption.graph, "dog"), counted(&[("brown", 1), ("big", 1)]));
    assert!(!caption.graph.contains_key("brown"));
}

#[test]
fn three_items_otherwise_make_a_relation_keyed_by_object() {
    let caption =
        caption_graph("( dog , on , grass ) , ( cat , near , dog ) , ( dog , near , grass ) , ( dog , on , grass )");
    assert_eq!(caption.entities, strings(&["dog", "grass", "cat"]));
    let dog = caption.graph.get("dog").expect("dog");
    assert_eq!(pairs(&dog.relation), vec![("grass".to_string(), strings(&["on", "near", "on"]))]);
    assert_eq!(dog.count, 1);
    let cat = caption.graph.get("cat").expect("cat");
    assert_eq!(pairs(&cat.relation), vec![("dog".to_string(), strings(&["near"]))]);
    assert!(caption.graph.get("grass").expect("grass").relation.is_empty());
}

#[test]
fn more_than_three_items_relate_first_and_last() {
    let caption = caption_graph("( man , sitting , next to , bench ) , ( man , in , front , of , car )");
    assert_eq!(caption.entities, strings(&["man", "bench", "car"]));
    let man = caption.graph.get("man").expect("man");
    assert_eq!(
        pairs(&man.relation),
        vec![("bench".to_string(), strings(&["sitting, next to"])), ("car".to_string(), strings(&["in, front, of"]))]
    );
}

#[test]
fn digits_two_to_nine_become_words_only_as_objects_of_triples() {
    let caption = caption_graph(
        "( dogs , is , 2 ) , ( cats , is , 10 ) , ( birds , is , 1 ) , ( 3 , near , 4 ) , ( cows , 5 ) , \
         ( sheep , by , the , 6 ) , ( goats , is , 9 )",
    );
    assert_eq!(caption.entities, strings(&["dogs", "cats", "birds", "3", "four", "cows", "sheep", "6", "goats"]));
    let graph = &caption.graph;
    assert_eq!(attributes(graph, "dogs"), counted(&[("two", 1)]));
    assert_eq!(attributes(graph, "cats"), counted(&[("10", 1)]));
    assert_eq!(attributes(graph, "birds"), counted(&[("1", 1)]));
    assert_eq!(attributes(graph, "cows"), counted(&[("5", 1)]));
    assert_eq!(attributes(graph, "goats"), counted(&[("nine", 1)]));
    assert_eq!(pairs(&graph.get("3").expect("3").relation), vec![("four".to_string(), strings(&["near"]))]);
}

#[test]
fn empty_parser_output_is_the_empty_entity() {
    assert_eq!(caption_graph("").entities, strings(&[""]));
    let concepts = run(&["", "Generate Scene Graph:", "  ", "", ""], &["a", "b", "c", "d", "e"], &[]);
    assert_eq!(pairs(&concepts.counts), counted(&[("", 5)]));
    // `"".find("")` is 0, which is dropped, so its position is 1.
    assert_eq!(concepts.ranked[0].relative_pos, 1.0);
    assert_eq!(concepts.concepts, strings(&[""]));
    assert_eq!(compose_prompt(&concepts.concepts), "There are  in image.");
}

// --- Counting over captions -----------------------------------------------------------------

#[test]
fn counts_over_five_captions_sort_stably_by_count() {
    let graphs = [
        "( man , riding , horse ) , ( horse , is , brown ) , ( man , on , beach )",
        "( woman , riding , horse ) , ( horse , is , white )",
        "( horse , on , beach ) , ( beach , is , sandy )",
        "( person , riding , horse ) , ( person , on , beach ) , ( horse , is , brown )",
        "( man , riding , horse ) , ( man , riding , horse ) , ( horse , is , brown )",
    ];
    let counts = count_entities(&graphs);
    assert_eq!(
        counts.caption_entities,
        vec![
            strings(&["man", "horse", "beach"]),
            strings(&["woman", "horse"]),
            strings(&["horse", "beach"]),
            strings(&["person", "horse", "beach"]),
            strings(&["man", "horse"]),
        ]
    );
    assert_eq!(pairs(&counts.counts), counted(&[("horse", 5), ("beach", 3), ("man", 2), ("woman", 1), ("person", 1)]));
    assert_eq!(counts.entities(), strings(&["horse", "beach", "man", "woman", "person"]));
    let horse = counts.graph.get("horse").expect("horse");
    assert_eq!(horse.count, 5);
    assert_eq!(pairs(&horse.attribute), counted(&[("brown", 3), ("white", 1)]));
    // Relations merge with `dict.update`: the later caption's predicate list replaces the earlier.
    let man = counts.graph.get("man").expect("man");
    assert_eq!(
        pairs(&man.relation),
        vec![("horse".to_string(), strings(&["riding", "riding"])), ("beach".to_string(), strings(&["on"]))]
    );

    let captions = [
        "A man riding a brown horse on the beach.",
        "A woman riding a white horse.",
        "A horse on a sandy beach.",
        "A person rides a brown horse on a beach.",
        "The man is riding a brown horse.",
    ];
    let concepts = run(&graphs, &captions, &[]);
    assert!(concepts.merge_pairs.is_empty());
    assert_eq!(concepts.kept, strings(&["horse", "beach"]));
    assert_eq!(concepts.ranked[0].relative_pos, 0.5571206896551724);
    assert_eq!(concepts.ranked[1].relative_pos, 0.82);
    assert_eq!(concepts.concepts, strings(&["brown horse", "beach"]));
    assert_eq!(compose_prompt(&concepts.concepts), "There are brown horse, beach in image.");
}

// --- SentenceBERT merging -------------------------------------------------------------------

// cat·dog = 0.8, dog·puppy = 0.8, cat·puppy = 0.3: a chain cat ~ dog ~ puppy.
const CAT: &[f32] = &[1.0, 0.0, 0.0];
const DOG: &[f32] = &[0.8, 0.6, 0.0];
const PUPPY: &[f32] = &[0.3, 0.933_333_3, 0.197_202_66];

#[test]
fn chain_merge_keeps_the_far_end_and_double_merges_attributes() {
    let graphs = [
        "( cat , is , black ) , ( dog , is , small ) , ( puppy , is , cute )",
        "( cat , is , black ) , ( dog , is , small ) , ( puppy , on , grass )",
        "( cat , is , black ) , ( dog , near , cat ) , ( puppy , on , bed )",
        "( cat , on , sofa ) , ( dog , on , sofa ) , ( puppy , on , sofa )",
        "( cat , near , dog )",
    ];
    let captions = [
        "A black cat near a small dog and a cute puppy.",
        "The black cat, the dog and a puppy on grass.",
        "A black cat and a dog and a puppy on a bed.",
        "A cat, a dog and a puppy on a sofa.",
        "The cat sits near the dog.",
    ];
    let concepts = run(&graphs, &captions, &[("cat", CAT), ("dog", DOG), ("puppy", PUPPY)]);
    assert_eq!(
        pairs(&concepts.counts),
        counted(&[("cat", 5), ("dog", 5), ("puppy", 4), ("grass", 1), ("bed", 1), ("sofa", 1)])
    );
    let visited: Vec<(usize, usize, bool)> =
        concepts.merge_pairs.iter().map(|pair| (pair.row, pair.column, pair.absorbed)).collect();
    assert_eq!(visited, vec![(0, 1, true), (1, 0, false), (1, 2, false), (2, 1, false)]);
    assert_eq!(concepts.merge_pairs[0].entity, "cat");
    assert_eq!(concepts.merge_pairs[0].similar, "dog");
    // Only cat absorbed a count; dog is the one removed entity and maps to cat.
    assert_eq!(
        pairs(&concepts.merged_counts),
        counted(&[("cat", 10), ("dog", 5), ("puppy", 4), ("grass", 1), ("bed", 1), ("sofa", 1)])
    );
    assert_eq!(concepts.removed, strings(&["dog"]));
    assert_eq!(pairs(&concepts.removed_map), vec![("dog".to_string(), "cat".to_string())]);
    // puppy was never removed, so it stays a concept of its own.
    assert_eq!(concepts.kept, strings(&["cat", "puppy"]));
    // Every pair ran `merge_sim_node`: cat took dog's 'small' (2), dog took cat's (now 2) back (4),
    // puppy took dog's 4. So 'small puppy', although 'small' was said of a dog in 2 captions.
    let graph = &concepts.graph;
    assert_eq!(attributes(graph, "cat"), counted(&[("black", 3), ("small", 2)]));
    assert_eq!(attributes(graph, "dog"), counted(&[("small", 4), ("black", 3), ("cute", 1)]));
    assert_eq!(attributes(graph, "puppy"), counted(&[("cute", 2), ("small", 4), ("black", 3)]));
    assert_eq!(graph.get("cat").expect("cat").count, 10);
    assert_eq!(concepts.concepts, strings(&["black cat", "small puppy"]));
}

#[test]
fn merged_count_crosses_the_threshold_and_count_two_is_dropped() {
    let graphs = [
        "( car , on , road ) , ( bus )",
        "( car , on , lane ) , ( tree , near , lane )",
        "( car , on , street )",
        "( truck , on , street )",
        "( truck , on , road )",
    ];
    let captions = [
        "a car on the road",
        "a car in a lane near a tree",
        "a car on the street",
        "a truck on the street",
        "a truck on a road",
    ];
    // road·street = 0.6 > 0.55.
    let concepts = run(&graphs, &captions, &[("street", &[1.0, 0.0, 0.0]), ("road", &[0.6, 0.8, 0.0])]);
    assert_eq!(
        pairs(&concepts.counts),
        counted(&[("car", 3), ("road", 2), ("street", 2), ("truck", 2), ("lane", 1), ("tree", 1)])
    );
    assert_eq!(concepts.merged_counts.get("road"), Some(&4));
    assert_eq!(concepts.removed, strings(&["street"]));
    // car: exactly 3 (> 2) is kept; truck: 2 is not; road: 2 + 2 merged is.
    assert_eq!(concepts.kept, strings(&["car", "road"]));
    assert_eq!(concepts.concepts, strings(&["car", "road"]));
}

#[test]
fn similarity_must_be_strictly_above_the_threshold() {
    let at = SIMILARITY_THRESHOLD;
    let graphs = ["( sofa , near , couch )"; 3];
    let concepts = run(&graphs, &["x"; 3], &[("sofa", &[1.0, 0.0]), ("couch", &[at, (1.0 - at * at).sqrt()])]);
    // f32 0.55 · 1 is exactly the threshold, and that does not merge.
    assert!(concepts.merge_pairs.is_empty());
    assert_eq!(concepts.concepts, strings(&["sofa", "couch"]));

    let above = f32::from_bits(at.to_bits() + 1);
    let concepts = run(&graphs, &["x"; 3], &[("sofa", &[1.0, 0.0]), ("couch", &[above, (1.0 - above * above).sqrt()])]);
    assert_eq!(concepts.merge_pairs.len(), 2);
    assert_eq!(concepts.concepts, strings(&["sofa"]));
}

#[test]
fn similarity_is_the_f32_dot_product_with_a_zero_diagonal() {
    let similarity = similarity_matrix(&[vec![1.0, 0.0], vec![0.6, 0.8]]).expect("similarity");
    assert_eq!(similarity, vec![vec![0.0, 0.6], vec![0.6, 0.0]]);
    assert!(matches!(similarity_matrix(&[vec![1.0], vec![1.0, 0.0]]), Err(Error::InvalidInput(_))));
}

#[test]
fn embeddings_must_match_the_entities() {
    let graphs = ["( dog , on , grass )".to_string()];
    let captions = strings(&["a dog on grass"]);
    let too_few = retrieve_concepts(&graphs, &captions, |_: &[String]| Ok(vec![vec![1.0]]));
    assert!(matches!(too_few, Err(Error::InvalidInput(_))));
    let failing = retrieve_concepts(&graphs, &captions, |_: &[String]| Err(Error::InvalidInput("sbert".into())));
    assert!(matches!(failing, Err(Error::InvalidInput(message)) if message == "sbert"));
    // No entities at all: the embedder is not asked.
    let empty: [String; 0] = [];
    let concepts =
        retrieve_concepts(&empty, &empty, |_: &[String]| -> Result<Vec<Vec<f32>>> { panic!("no entities to embed") })
            .expect("concepts");
    assert!(concepts.concepts.is_empty());
}

// --- Ordering -------------------------------------------------------------------------------

#[test]
fn position_ties_keep_the_order_relations_inserted() {
    // kept = [alpha, beta, gamma], all at position 1. alpha relates to gamma, which enters the
    // ranking right after alpha, before beta.
    let graphs = [
        "( alpha , is , big ) , ( beta , is , red ) , ( gamma , is , old )",
        "( alpha , is , big ) , ( beta , is , red ) , ( gamma , is , old )",
        "( alpha , is , big ) , ( beta , is , red ) , ( gamma , is , old )",
        "( alpha , near , gamma ) , ( beta , is , red )",
    ];
    let concepts = run(&graphs, &["q", "r", "s", "t"], &[]);
    assert_eq!(concepts.kept, strings(&["alpha", "beta", "gamma"]));
    assert_eq!(concepts.concepts, strings(&["big alpha", "old gamma", "red beta"]));
}

#[test]
fn position_ties_follow_relations_to_removed_entities() {
    // alpha relates to road, which merged into street: street enters the ranking after alpha.
    let graphs = [
        "( alpha , near , road ) , ( beta , is , red ) , ( street , is , wet )",
        "( alpha , near , road ) , ( beta , is , red ) , ( street , is , wet )",
        "( alpha , near , road ) , ( beta , is , red ) , ( street , is , wet )",
        "( alpha , is , big ) , ( beta , is , red ) , ( street , is , wet )",
    ];
    let concepts = run(&graphs, &["q", "r", "s", "t"], &[("street", &[1.0, 0.0, 0.0]), ("road", &[0.6, 0.8, 0.0])]);
    assert_eq!(concepts.kept, strings(&["alpha", "beta", "street"]));
    assert_eq!(pairs(&concepts.removed_map), vec![("road".to_string(), "street".to_string())]);
    assert_eq!(concepts.concepts, strings(&["alpha", "wet street", "red beta"]));
}

#[test]
fn positions_are_case_sensitive_substrings_without_index_zero() {
    let graphs = ["( man , is , tall ) , ( woman , is , tall ) , ( dog , is , tall )"; 3];
    let captions = ["man and dog", "a woman and a dog", "Dog with a Man", "dog", "the woman"];
    let concepts = run(&graphs, &captions, &[]);
    let ranked: Vec<(&str, f64)> = concepts.ranked.iter().map(|r| (r.entity.as_str(), r.relative_pos)).collect();
    // man: index 0 in caption 1 is dropped, "Man" does not match, "woman" contains it (4/17, 6/9).
    assert_eq!(ranked, vec![("woman", 0.28104575163398693), ("man", 0.4509803921568627), ("dog", 0.7754010695187166)]);
    assert_eq!(relative_position("man", &captions), (4.0 / 17.0 + 6.0 / 9.0) / 2.0);
    assert_eq!(concepts.concepts, strings(&["tall woman", "tall man", "tall dog"]));
}

#[test]
fn positions_count_code_points_not_bytes() {
    let graphs = ["( horse , near , dog )"; 3];
    // horse: 6/11 in code points (11/16 in bytes); dog: 8/13. Counting bytes would swap them.
    let captions = ["ééééé horse", "aaaaaaa dog a", "zz", "zz", "zz"];
    let concepts = run(&graphs, &captions, &[]);
    assert_eq!(concepts.ranked[0].relative_pos, 6.0 / 11.0);
    assert_eq!(concepts.ranked[1].relative_pos, 8.0 / 13.0);
    assert_eq!(concepts.concepts, strings(&["horse", "dog"]));
}

#[test]
fn position_is_one_when_never_found_and_empty_captions_are_skipped() {
    assert_eq!(relative_position("dog", &["no match", "dog first"]), 1.0);
    // Python would divide by zero on the empty caption.
    assert_eq!(relative_position("dog", &["", "a dog"]), 0.4);
    assert_eq!(relative_position("", &["", "abc"]), 1.0);
}

#[test]
fn position_mean_is_numpys_pairwise_sum() {
    // np.mean of these 20 (and 300) positions differs in the last bit from a sequential sum.
    let twenty: Vec<String> = (1..=20).map(|i| format!("{}dog{}", "x".repeat(i), "y".repeat(3 * i % 7 + 1))).collect();
    assert_eq!(relative_position("dog", &twenty), 0.5495652472929022);
    let many: Vec<String> = (1..=300).map(|i| format!("{}dog{}", "x".repeat(i), "y".repeat(5 * i % 13 + 1))).collect();
    assert_eq!(relative_position("dog", &many), 0.8891673040338641);
}

#[test]
fn at_most_four_concepts_and_the_first_frequent_attribute_prefixes() {
    let graphs = [
        "( a1 , is , small ) , ( a1 , is , big ) , ( a1 , is , red ) , ( a2 , x , a3 ) , ( a4 , y , a5 )",
        "( a1 , is , small ) , ( a1 , is , big ) , ( a1 , is , red ) , ( a2 , x , a3 ) , ( a4 , y , a5 )",
        "( a1 , is , big ) , ( a1 , is , red ) , ( a2 , x , a3 ) , ( a4 , y , a5 )",
        "( a1 , is , red ) , ( a5 , is , old )",
        "( a5 , is , old ) , ( a5 , is , new )",
    ];
    let captions = ["w a1 a5 a4 a3 a2", "w a1 a5 a4 a3 a2", "w a1 a5 a4 a3 a2", "w", "w"];
    let concepts = run(&graphs, &captions, &[]);
    assert_eq!(attributes(&concepts.graph, "a1"), counted(&[("small", 2), ("big", 3), ("red", 4)]));
    let ranked: Vec<&str> = concepts.ranked.iter().map(|r| r.concept.as_str()).collect();
    // 'big' (3) comes before 'red' (4) in insertion order; a5's 'old' (2) is below 3.
    assert_eq!(ranked, vec!["big a1", "a5", "a4", "a3", "a2"]);
    assert_eq!(concepts.ranked[0].attribute.as_deref(), Some("big"));
    assert_eq!(concepts.concepts, strings(&["big a1", "a5", "a4", "a3"]));
    assert_eq!(compose_prompt(&concepts.concepts), "There are big a1, a5, a4, a3 in image.");
}

// --- Prompt and output ----------------------------------------------------------------------

#[test]
fn no_concepts_make_the_something_prompt() {
    let concepts = run(&["( dog , on , grass )", "( cat )"], &["a dog", "a cat"], &[]);
    assert!(concepts.kept.is_empty() && concepts.concepts.is_empty());
    assert_eq!(compose_prompt(&concepts.concepts), "There are something in image.");
    assert_eq!(compose_prompt::<&str>(&[]), "There are something in image.");
    assert_eq!(compose_prompt(&["giraffe"]), "There are giraffe in image.");
    assert_eq!(compose_prompt(&["giraffe", "building"]), "There are giraffe, building in image.");
}

#[test]
fn concepts_serialise_with_ordered_maps() {
    let concepts = run(&["( zebra , near , ant )"; 3], &["x zebra ant"; 3], &[]);
    let json = serde_json::to_string(&concepts).expect("json");
    assert!(json.contains(r#""counts":{"zebra":3,"ant":3}"#), "{json}");
    assert!(json.contains(r#""concepts":["zebra","ant"]"#), "{json}");
    let value: serde_json::Value = serde_json::from_str(&json).expect("parse");
    assert_eq!(value["graph"]["zebra"]["relation"]["ant"], serde_json::json!(["near"]));
}

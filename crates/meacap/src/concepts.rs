//! Memory concepts: FACTUAL scene-graph strings → entities → counts → SentenceBERT merge →
//! ordered concepts → the hard prompt `"There are c1, c2 in image."`.
//!
//! This is the logic of MeaCap's `retrieve_concepts` (`utils/detect_utils.py`) and the helpers it
//! calls in `utils/parse_tool.py` (`parse`'s post-processing, `format_scene_graph`,
//! `get_seg_list_seperate`, `add_node_graph`, `merge_seperate_graph`, `get_graph_dict`,
//! `merge_sim_node`, `merge_graph_dict`, `filter_relation`), plus ViECap's
//! `compose_discrete_prompts`. It holds no tensor code: the parser's decoded text comes in as
//! strings and the SentenceBERT embeddings through a closure, so every rule can be tested alone.
//!
//! Parity notes (each one replicates the original on purpose):
//! * Whitespace is Python's `str.split()` / `str.strip()` whitespace, which includes U+001C..U+001F
//!   on top of Unicode `White_Space`.
//! * Similarities are `E · Eᵀ` in f32 with the diagonal zeroed; a pair merges when strictly
//!   `> 0.55`. Pairs are visited in row-major order and the bookkeeping (counts updated in place,
//!   `merge_sim_node` applied for every pair, attributes possibly merged twice) is literal. (A
//!   BLAS `sgemm` may round a dot product differently in the last bit, which only matters for a
//!   similarity within an ulp of the threshold.)
//! * Positions in captions are case-sensitive first-occurrence substring matches counted in Unicode
//!   code points, as Python's `str.find` / `len` do; a match at index 0 is dropped (`p > 0`).
//!   The mean is numpy's (pairwise summation in f64).
//!
//! # The one deliberate deviation
//! After each caption the original deduplicates its entities with `list(set(entity_list))`, whose
//! order depends on Python's per-process string hash seed. That order fixes the insertion order of
//! the entity counts, hence the order among equal counts, hence which of two similar entities
//! survives the merge and how position ties break. Here the deduplication keeps first-occurrence
//! order (Python: `list(dict.fromkeys(entity_list))`), which makes the result deterministic. A
//! reference run of the original matches this module when patched the same way.
//!
//! # Smaller differences, none of which reaches the concepts
//! * An empty caption makes `find(..) / len(..)` divide by zero in Python; here it is skipped when
//!   computing positions (as a miss).
//! * A relation predicate that contained commas is stored as its items joined with `", "`, not
//!   as a nested list. Relations only order ties (through which nodes they name), never the text.
//! * `filter_relation`'s `rating` is not computed: the original sorts by position only.

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::error::{Error, Result};

/// What the FACTUAL parser's input starts with (the trailing space is part of it).
pub const PARSER_PREFIX: &str = "Generate Scene Graph: ";

/// The literal that `parse` removes from the decoded output (no trailing space).
const DECODED_PREFIX: &str = "Generate Scene Graph:";

/// Two entities merge when their SentenceBERT cosine similarity is strictly above this.
pub const SIMILARITY_THRESHOLD: f32 = 0.55;

/// An entity is kept when its (merged) count is strictly above this: found in 3 of 5 captions.
pub const COUNT_THRESHOLD: usize = 2;

/// An attribute prefixes its entity when attached in at least this many captions.
pub const ATTRIBUTE_THRESHOLD: usize = 3;

/// `retrieve_concepts` returns at most this many concepts.
pub const MAX_CONCEPTS: usize = 4;

/// `NUMBER_DICT`: applied only to the object of a 3-item segment. `'1'` and `'10'` stay digits.
const NUMBER_WORDS: [(&str, &str); 8] = [
    ("2", "two"),
    ("3", "three"),
    ("4", "four"),
    ("5", "five"),
    ("6", "six"),
    ("7", "seven"),
    ("8", "eight"),
    ("9", "nine"),
];

/// The parser input for one caption.
pub fn parser_input(caption: &str) -> String {
    format!("{PARSER_PREFIX}{caption}")
}

/// The post-processing `parse` applies to each decoded parser output: remove every literal
/// `Generate Scene Graph:`, strip, then space out `(`, `)`, `,` and collapse whitespace.
pub fn format_scene_graph(decoded: &str) -> String {
    let without_prefix = decoded.replace(DECODED_PREFIX, "");
    space_graph_tokens(python_strip(&without_prefix))
}

/// The original's `format_scene_graph` proper: spaces around `(`, `)`, `,`, whitespace collapsed
/// to single spaces. Idempotent.
fn space_graph_tokens(graph: &str) -> String {
    let spaced = graph.replace('(', " ( ").replace(')', " ) ").replace(',', " , ");
    python_split_whitespace(&spaced).collect::<Vec<_>>().join(" ")
}

/// Python's `str.isspace()`: Unicode `White_Space` plus the separators U+001C..U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn python_strip(text: &str) -> &str {
    text.trim_matches(is_python_space)
}

fn python_split_whitespace(text: &str) -> impl Iterator<Item = &str> {
    text.split(is_python_space).filter(|token| !token.is_empty())
}

/// The segments of one graph string (`get_seg_list_seperate` for one graph): split on
/// `") , ("`, drop every parenthesis, strip. An empty graph gives one empty segment.
pub fn split_segments(graph: &str) -> Vec<String> {
    space_graph_tokens(graph)
        .split(") , (")
        .map(|segment| python_strip(&segment.replace(['(', ')'], "")).to_string())
        .collect()
}

/// The comma-separated items of one segment, each stripped.
pub fn segment_items(segment: &str) -> Vec<String> {
    segment.split(',').map(|item| python_strip(item).to_string()).collect()
}

/// A string-keyed map that keeps insertion order, like a Python `dict`: re-inserting an existing
/// key replaces its value in place. Linear lookups: graphs hold a few dozen entries.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderedMap<V> {
    entries: Vec<(String, V)>,
}

impl<V> Default for OrderedMap<V> {
    fn default() -> Self {
        OrderedMap { entries: Vec::new() }
    }
}

impl<V> OrderedMap<V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.position(key).map(|index| &self.entries[index].1)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.position(key).map(|index| &mut self.entries[index].1)
    }

    /// `dict[key] = value`: replaces in place when present, appends otherwise.
    pub fn insert(&mut self, key: impl Into<String>, value: V) {
        let key = key.into();
        match self.position(&key) {
            Some(index) => self.entries[index].1 = value,
            None => self.entries.push((key, value)),
        }
    }

    /// The value at `key`, inserted with `make` first when absent.
    pub fn get_or_insert_with(&mut self, key: &str, make: impl FnOnce() -> V) -> &mut V {
        let index = match self.position(key) {
            Some(index) => index,
            None => {
                self.entries.push((key.to_string(), make()));
                self.entries.len() - 1
            }
        };
        &mut self.entries[index].1
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.entries.iter().map(|(key, value)| (key.as_str(), value))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(key, _)| key.as_str())
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.entries.iter().position(|(existing, _)| existing == key)
    }
}

impl<V: Clone> OrderedMap<V> {
    /// `dict.update(other)`.
    pub fn update(&mut self, other: &OrderedMap<V>) {
        for (key, value) in other.iter() {
            self.insert(key, value.clone());
        }
    }
}

impl<K: Into<String>, V> FromIterator<(K, V)> for OrderedMap<V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut map = OrderedMap::new();
        for (key, value) in iter {
            map.insert(key, value);
        }
        map
    }
}

/// Serialised as a JSON object in insertion order.
impl<V: Serialize> Serialize for OrderedMap<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (key, value) in &self.entries {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// One scene-graph node, as the original's `{"Relation": {}, "Attribute": {}, "count": 1}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    /// Relation edges keyed by the **object**; each value lists predicates in the order seen.
    /// A predicate that contained commas (a segment of more than 3 items) is its items joined
    /// with `", "` (the original keeps it as a nested list).
    pub relation: OrderedMap<Vec<String>>,
    /// Attribute → number of captions attaching it (within one caption it is set to 1).
    pub attribute: OrderedMap<usize>,
    /// Captions mentioning this node (plus whatever SBERT merging added).
    pub count: usize,
}

impl Node {
    fn new() -> Self {
        Node { relation: OrderedMap::new(), attribute: OrderedMap::new(), count: 1 }
    }

    /// `merge_seperate_graph` / `merge_sim_node` for one node: relations updated, counts and
    /// attribute counts summed (new attributes appended).
    fn absorb(&mut self, other: &Node) {
        self.relation.update(&other.relation);
        self.count += other.count;
        for (attribute, count) in other.attribute.iter() {
            *self.attribute.get_or_insert_with(attribute, || 0) += count;
        }
    }
}

/// Entity → node, in insertion order.
pub type SceneGraph = OrderedMap<Node>;

/// The edge `add_node_graph` adds to a subject.
enum Edge {
    None,
    Attribute(String),
    Relation { object: String, predicate: String },
}

/// `add_node_graph`: create the node on first sight; attributes are set to 1, relation
/// predicates appended.
fn add_node(graph: &mut SceneGraph, subject: &str, edge: Edge) {
    let node = graph.get_or_insert_with(subject, Node::new);
    match edge {
        Edge::None => {}
        Edge::Attribute(attribute) => node.attribute.insert(attribute, 1),
        Edge::Relation { object, predicate } => node.relation.get_or_insert_with(&object, Vec::new).push(predicate),
    }
}

/// The entities and graph of one caption (one iteration of `get_graph_dict`'s outer loop).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptionGraph {
    /// Entities mentioned, deduplicated in first-occurrence order (the deliberate deviation).
    pub entities: Vec<String>,
    pub graph: SceneGraph,
}

/// Entities and graph of one formatted parser output.
///
/// Rules per segment of `n` items `s0, s1, ...`:
/// * `n == 1`, and the graph has this one segment only: entity `s0` with no edge (a 1-item
///   segment among others is ignored);
/// * `n == 2`: entity `s0` with attribute `s1`;
/// * `n == 3`: `s2` in `'2'..='9'` becomes its word; predicate `is` makes `s2` an attribute of
///   `s0`, any other predicate a relation `s0 → s2` and both are entities;
/// * `n > 3`: relation `s0 → s[n-1]` with the predicate `s[1..n-1]`; both are entities.
pub fn caption_graph(graph: &str) -> CaptionGraph {
    let segments = split_segments(graph);
    let mut mentioned: Vec<String> = Vec::new();
    let mut scene = SceneGraph::new();
    for segment in &segments {
        let mut items = segment_items(segment);
        match items.len() {
            1 => {
                if segments.len() == 1 {
                    add_node(&mut scene, &items[0], Edge::None);
                    mentioned.push(items[0].clone());
                }
            }
            2 => {
                add_node(&mut scene, &items[0], Edge::Attribute(items[1].clone()));
                mentioned.push(items[0].clone());
            }
            3 => {
                if let Some((_, word)) = NUMBER_WORDS.iter().find(|(digit, _)| *digit == items[2]) {
                    items[2] = word.to_string();
                }
                let (subject, predicate, object) = (&items[0], &items[1], &items[2]);
                if predicate == "is" {
                    add_node(&mut scene, subject, Edge::Attribute(object.clone()));
                    mentioned.push(subject.clone());
                } else {
                    mentioned.push(subject.clone());
                    mentioned.push(object.clone());
                    let edge = Edge::Relation { object: object.clone(), predicate: predicate.clone() };
                    add_node(&mut scene, subject, edge);
                    add_node(&mut scene, object, Edge::None);
                }
            }
            _ => {
                let last = items.len() - 1;
                let (subject, object) = (&items[0], &items[last]);
                mentioned.push(subject.clone());
                mentioned.push(object.clone());
                let predicate = items[1..last].join(", ");
                add_node(&mut scene, subject, Edge::Relation { object: object.clone(), predicate });
                add_node(&mut scene, object, Edge::None);
            }
        }
    }
    CaptionGraph { entities: dedup_first_occurrence(mentioned), graph: scene }
}

/// `list(dict.fromkeys(items))`: the deterministic stand-in for the original's `list(set(items))`.
fn dedup_first_occurrence(items: Vec<String>) -> Vec<String> {
    let mut unique: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        if !unique.contains(&item) {
            unique.push(item);
        }
    }
    unique
}

/// `get_graph_dict` over all captions' graphs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntityCounts {
    /// Per caption, its deduplicated entities (first-occurrence order).
    pub caption_entities: Vec<Vec<String>>,
    /// Entity → number of captions mentioning it, sorted by count descending; ties keep
    /// first-seen order. This order is the SBERT input order.
    pub counts: OrderedMap<usize>,
    /// The captions' graphs merged in order (`merge_seperate_graph`).
    pub graph: SceneGraph,
}

impl EntityCounts {
    /// The entities in count order, as handed to SentenceBERT.
    pub fn entities(&self) -> Vec<String> {
        self.counts.keys().map(str::to_string).collect()
    }
}

/// Entities, counts and merged graph of the formatted parser outputs, one per caption.
pub fn count_entities<G: AsRef<str>>(graphs: &[G]) -> EntityCounts {
    let mut caption_entities = Vec::with_capacity(graphs.len());
    let mut first_seen: OrderedMap<usize> = OrderedMap::new();
    let mut graph = SceneGraph::new();
    for formatted in graphs {
        let caption = caption_graph(formatted.as_ref());
        for entity in &caption.entities {
            *first_seen.get_or_insert_with(entity, || 0) += 1;
        }
        // `merge_seperate_graph`: an existing node absorbs, a new one is taken as is.
        for (entity, node) in caption.graph.iter() {
            match graph.get_mut(entity) {
                Some(existing) => existing.absorb(node),
                None => graph.insert(entity, node.clone()),
            }
        }
        caption_entities.push(caption.entities);
    }
    // Python's `sorted(.., reverse=True)` is stable: equal counts keep insertion order.
    let mut sorted: Vec<(String, usize)> = first_seen.entries;
    sorted.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    EntityCounts { caption_entities, counts: sorted.into_iter().collect(), graph }
}

/// `E · Eᵀ` in f32 with the diagonal set to 0 (`torch.mm` then `S[i, i] = 0`).
pub fn similarity_matrix(embeddings: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
    let width = embeddings.first().map_or(0, Vec::len);
    if let Some(row) = embeddings.iter().position(|embedding| embedding.len() != width) {
        return Err(Error::InvalidInput(format!(
            "concept embeddings: row {row} has {} values, row 0 has {width}",
            embeddings[row].len()
        )));
    }
    let similarity =
        embeddings
            .iter()
            .enumerate()
            .map(|(row, left)| {
                embeddings
                    .iter()
                    .enumerate()
                    .map(|(column, right)| {
                        if row == column {
                            0.0
                        } else {
                            left.iter().zip(right).fold(0.0f32, |sum, (a, b)| sum + a * b)
                        }
                    })
                    .collect()
            })
            .collect();
    Ok(similarity)
}

/// One `(x, y)` of `torch.where(S > 0.55)`, as the merge loop handled it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MergePair {
    /// Row and column in the entity order of [`EntityCounts::counts`].
    pub row: usize,
    pub column: usize,
    pub entity: String,
    pub similar: String,
    pub similarity: f32,
    /// Whether `entity` was not yet removed, so it took `similar` into its merge list and added
    /// its count. (Its graph node absorbs `similar`'s node either way.)
    pub absorbed: bool,
}

/// A kept entity with its position score, in final order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankedEntity {
    pub entity: String,
    /// Mean relative position in the captions (1 when found in none past index 0).
    pub relative_pos: f64,
    /// The first attribute (insertion order) attached in at least [`ATTRIBUTE_THRESHOLD`] captions.
    pub attribute: Option<String>,
    /// What the concept list shows: `"{attribute} {entity}"` or `entity`.
    pub concept: String,
}

/// Everything `retrieve_concepts` worked out, for debugging and JSON output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Concepts {
    /// Per caption, its deduplicated entities.
    pub caption_entities: Vec<Vec<String>>,
    /// Entity → captions mentioning it, before merging, in count order (the SBERT input order).
    pub counts: OrderedMap<usize>,
    /// Pairs above the similarity threshold, in the order the merge visited them.
    pub merge_pairs: Vec<MergePair>,
    /// `counts` after the merge added similar entities' counts (same order).
    pub merged_counts: OrderedMap<usize>,
    /// Entities merged into another one (the original's recomputed `remove_list`, duplicates kept).
    pub removed: Vec<String>,
    /// Removed entity → the entity standing in for it as a relation object (`removed_map`).
    pub removed_map: OrderedMap<String>,
    /// Entities not removed whose merged count is above [`COUNT_THRESHOLD`], in count order.
    pub kept: Vec<String>,
    /// The kept entities sorted by relative position.
    pub ranked: Vec<RankedEntity>,
    /// The final concepts: at most [`MAX_CONCEPTS`] of `ranked`.
    pub concepts: Vec<String>,
    /// The merged scene graph after SBERT merging (attribute counts included).
    pub graph: SceneGraph,
}

/// MeaCap's `retrieve_concepts` after the parser: `graphs` are the formatted parser outputs (one
/// per retrieved caption), `captions` the retrieved captions (used for positions), and `embed`
/// returns one L2-normalised SentenceBERT embedding per entity, in the order given. `embed` is
/// not called when there are no entities.
pub fn retrieve_concepts<G, C, E>(graphs: &[G], captions: &[C], mut embed: E) -> Result<Concepts>
where
    G: AsRef<str>,
    C: AsRef<str>,
    E: FnMut(&[String]) -> Result<Vec<Vec<f32>>>,
{
    let counts = count_entities(graphs);
    let entities = counts.entities();
    let embeddings = if entities.is_empty() { Vec::new() } else { embed(&entities)? };
    rank_with_embeddings(counts, &embeddings, captions)
}

/// The rest of [`retrieve_concepts`] once the entities of `counts` (in [`EntityCounts::entities`]
/// order) are embedded: for callers that embed asynchronously.
pub fn rank_with_embeddings<C: AsRef<str>>(counts: EntityCounts, embeddings: &[Vec<f32>], captions: &[C]) -> Result<Concepts> {
    let entities = counts.entities();
    if embeddings.len() != entities.len() {
        return Err(Error::InvalidInput(format!(
            "concept embeddings: {} rows for {} entities",
            embeddings.len(),
            entities.len()
        )));
    }
    let similarity = similarity_matrix(embeddings)?;
    merge_and_rank(counts, &similarity, captions)
}

/// `merge_graph_dict` and `filter_relation`, given the similarity matrix (diagonal ignored) over
/// the entities of `counts` in count order.
pub fn merge_and_rank<C: AsRef<str>>(
    counts: EntityCounts,
    similarity: &[Vec<f32>],
    captions: &[C],
) -> Result<Concepts> {
    let EntityCounts { caption_entities, counts, mut graph } = counts;
    let entities: Vec<String> = counts.keys().map(str::to_string).collect();
    if similarity.len() != entities.len() || similarity.iter().any(|row| row.len() != entities.len()) {
        return Err(Error::InvalidInput(format!(
            "concept similarity: expected {n}x{n} for {n} entities",
            n = entities.len()
        )));
    }

    let mut merged_counts = counts.clone();
    let mut merge_lists: OrderedMap<Vec<String>> = OrderedMap::new(); // `sim_entity_dict`
    let mut removed_similar: OrderedMap<Vec<String>> = OrderedMap::new(); // `remove_entity_dict`
    let mut removed_so_far: Vec<String> = Vec::new(); // `remove_list` during the loop
    let mut merge_pairs = Vec::new();
    for (row, similarities) in similarity.iter().enumerate() {
        for (column, &value) in similarities.iter().enumerate() {
            // `S > 0.55` exactly as torch tests it, so NaN never merges.
            let above_threshold = value > SIMILARITY_THRESHOLD;
            if row == column || !above_threshold {
                continue;
            }
            let (entity, similar) = (&entities[row], &entities[column]);
            let absorbed = !removed_so_far.contains(entity);
            if absorbed {
                merge_lists.get_or_insert_with(entity, Vec::new).push(similar.clone());
                let similar_count = merged_counts.get(similar).copied().unwrap_or(0);
                *merged_counts.get_or_insert_with(entity, || 0) += similar_count;
            } else {
                removed_similar.get_or_insert_with(entity, Vec::new).push(similar.clone());
            }
            if !merge_lists.contains_key(similar) {
                removed_so_far.push(similar.clone());
            }
            // `merge_sim_node`, for every pair whatever the bookkeeping above decided.
            if let Some(similar_node) = graph.get(similar).cloned() {
                if let Some(node) = graph.get_mut(entity) {
                    node.absorb(&similar_node);
                }
            }
            merge_pairs.push(MergePair {
                row,
                column,
                entity: entity.clone(),
                similar: similar.clone(),
                similarity: value,
                absorbed,
            });
        }
    }

    let removed: Vec<String> = merge_lists.iter().flat_map(|(_, merged)| merged.iter().cloned()).collect();
    let mut removed_map: OrderedMap<String> = OrderedMap::new();
    for word in &removed {
        // The original catches the KeyError / IndexError here, prints "remove wrong!" and goes on.
        let stand_in =
            removed_similar.get(word).and_then(|similar| similar.iter().find(|candidate| !removed.contains(candidate)));
        match stand_in {
            Some(stand_in) => removed_map.insert(word.as_str(), stand_in.clone()),
            None => tracing::debug!("concepts: no stand-in for removed entity {word:?}"),
        }
    }

    let kept: Vec<String> = merged_counts
        .iter()
        .filter(|(entity, &count)| !removed.iter().any(|r| r == entity) && count > COUNT_THRESHOLD)
        .map(|(entity, _)| entity.to_string())
        .collect();
    let ranked = if kept.is_empty() { Vec::new() } else { rank(&kept, &graph, &removed_map, captions) };
    let concepts = ranked.iter().take(MAX_CONCEPTS).map(|ranked| ranked.concept.clone()).collect();
    Ok(Concepts {
        caption_entities,
        counts,
        merge_pairs,
        merged_counts,
        removed,
        removed_map,
        kept,
        ranked,
        concepts,
        graph,
    })
}

/// `filter_relation`: order the kept entities by relative position and prefix the first frequent
/// attribute. Ties keep `res_dict`'s insertion order, where a kept entity enters early when an
/// earlier kept entity has it (or an entity standing for it) as a relation object.
fn rank<C: AsRef<str>>(
    kept: &[String],
    graph: &SceneGraph,
    removed_map: &OrderedMap<String>,
    captions: &[C],
) -> Vec<RankedEntity> {
    // `res_dict`'s insertion order, as indices into `kept`.
    let mut insertion_order: Vec<usize> = Vec::with_capacity(kept.len());
    let mut enter = |entity: &str| {
        if let Some(index) = kept.iter().position(|k| k == entity) {
            if !insertion_order.contains(&index) {
                insertion_order.push(index);
            }
        }
    };
    for entity in kept {
        enter(entity);
        let Some(node) = graph.get(entity) else { continue };
        for object in node.relation.keys() {
            if kept.iter().any(|k| k == object) {
                enter(object);
            } else if let Some(stand_in) = removed_map.get(object) {
                // Entered only when the stand-in is kept; otherwise the relation is ignored.
                enter(stand_in);
            }
        }
    }

    let mut ranked: Vec<RankedEntity> = insertion_order
        .into_iter()
        .map(|index| {
            let entity = kept[index].as_str();
            let attribute = graph.get(entity).and_then(|node| {
                node.attribute
                    .iter()
                    .find(|(_, &count)| count >= ATTRIBUTE_THRESHOLD)
                    .map(|(attribute, _)| attribute.to_string())
            });
            let concept = match &attribute {
                Some(attribute) => format!("{attribute} {entity}"),
                None => entity.to_string(),
            };
            RankedEntity {
                entity: entity.to_string(),
                relative_pos: relative_position(entity, captions),
                attribute,
                concept,
            }
        })
        .collect();
    // Stable, ascending: ties keep insertion order.
    ranked.sort_by(|a, b| a.relative_pos.total_cmp(&b.relative_pos));
    ranked
}

/// Mean of `caption.find(entity) / len(caption)` over the captions where it is `> 0`, counted in
/// code points; 1 when there is none. Empty captions are skipped (Python divides by zero).
pub fn relative_position<C: AsRef<str>>(entity: &str, captions: &[C]) -> f64 {
    let positions: Vec<f64> = captions
        .iter()
        .filter_map(|caption| {
            let caption = caption.as_ref();
            let length = caption.chars().count();
            let byte_index = caption.find(entity)?;
            if length == 0 {
                return None;
            }
            let position = caption[..byte_index].chars().count() as f64 / length as f64;
            (position > 0.0).then_some(position)
        })
        .collect();
    if positions.is_empty() {
        1.0
    } else {
        numpy_sum(&positions) / positions.len() as f64
    }
}

/// `np.add.reduce` over a contiguous f64 array: numpy's pairwise summation (blocks of 128,
/// 8-way unrolled below that, sequential under 8), so that means match `np.mean` to the bit.
fn numpy_sum(values: &[f64]) -> f64 {
    0.0 + numpy_pairwise_sum(values)
}

fn numpy_pairwise_sum(values: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = values.len();
    if n < 8 {
        values.iter().fold(0.0, |sum, value| sum + value)
    } else if n <= BLOCK {
        let mut partial = [0.0f64; 8];
        partial.copy_from_slice(&values[..8]);
        let mut index = 8;
        while index < n - n % 8 {
            for (lane, sum) in partial.iter_mut().enumerate() {
                *sum += values[index + lane];
            }
            index += 8;
        }
        let mut sum = ((partial[0] + partial[1]) + (partial[2] + partial[3]))
            + ((partial[4] + partial[5]) + (partial[6] + partial[7]));
        for value in &values[index..] {
            sum += value;
        }
        sum
    } else {
        let mut half = n / 2;
        half -= half % 8;
        numpy_pairwise_sum(&values[..half]) + numpy_pairwise_sum(&values[half..])
    }
}

/// ViECap's `compose_discrete_prompts` text: `"There are c1, c2 in image."`, or
/// `"There are something in image."` without concepts.
pub fn compose_prompt<S: AsRef<str>>(concepts: &[S]) -> String {
    if concepts.is_empty() {
        return "There are something in image.".to_string();
    }
    let listed: Vec<&str> = concepts.iter().map(AsRef::as_ref).collect();
    format!("There are {} in image.", listed.join(", "))
}

//! Byte-level BPE, as GPT-2 tokenizes text, read from a Hugging Face `tokenizer.json`.
//!
//! A pre-trained GPT-2 checkpoint only means something with the tokenizer it was trained with.
//! That tokenizer works on bytes: each of the 256 byte values is first written as one printable
//! character (the table of [`byte_chars`]), text is cut into pieces by GPT-2's pattern
//! (contractions, a letter run, a digit run or a punctuation run each with at most one leading
//! space, and whitespace), and each piece's characters are merged pairwise, lowest-ranked merge
//! first, into vocabulary entries. Decoding joins the entries and maps the characters back to
//! bytes. Added tokens (`<|endoftext|>`) are cut out of the text before all that and stand for
//! themselves.
//!
//! Written here rather than taken from the `tokenizers` crate: that crate's build (a C regex
//! engine by default, many features) is heavy for the browser's engine, and GPT-2's subset of
//! it is this file. GPT-2's pattern uses a lookahead (`\s+(?!\S)`), which the `regex` crate
//! (already in burn's build) does not offer; `Tokenizer::pieces` does its work by hand.
//! `bpe_matches_the_reference_tokenizer` holds it to the `tokenizers` library's ids.

use regex::Regex;
use serde::Deserialize;
use std::collections::HashMap;

/// GPT-2's pre-tokenizer pattern, less its `\s+(?!\S)` alternative (see `Tokenizer::pieces`).
const PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

/// Why a `tokenizer.json` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer.json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("tokenizer.json: {0} (only GPT-2's byte-level BPE is supported)")]
    Unsupported(String),
    #[error("tokenizer.json: {0}")]
    Inconsistent(String),
}

/// A byte-level BPE tokenizer.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    /// Each byte's one-character token.
    byte_ids: [u32; 256],
    /// `(left, right) → (rank, merged)`: the merges, lowest rank first.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Each id's bytes (empty where no token has the id).
    bytes: Vec<Vec<u8>>,
    /// Added tokens (cut out before pre-tokenizing), longest first.
    added: Vec<(String, u32)>,
    add_prefix_space: bool,
    /// `false`: the whole text is one piece.
    use_regex: bool,
    pattern: Regex,
}

#[derive(Deserialize)]
struct File {
    model: ModelFile,
    #[serde(default)]
    normalizer: Option<serde_json::Value>,
    #[serde(default)]
    pre_tokenizer: Option<PreTokenizerFile>,
    #[serde(default)]
    added_tokens: Vec<AddedFile>,
}

#[derive(Deserialize)]
struct ModelFile {
    #[serde(rename = "type")]
    kind: String,
    vocab: HashMap<String, u32>,
    merges: Vec<MergeFile>,
    #[serde(default)]
    continuing_subword_prefix: Option<String>,
    #[serde(default)]
    end_of_word_suffix: Option<String>,
    #[serde(default)]
    byte_fallback: bool,
}

/// A merge as `"a b"` (older files, GPT-2's own) or `["a", "b"]` (newer ones).
#[derive(Deserialize)]
#[serde(untagged)]
enum MergeFile {
    Pair(String, String),
    Joined(String),
}

#[derive(Deserialize)]
struct PreTokenizerFile {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    add_prefix_space: bool,
    #[serde(default = "yes")]
    use_regex: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct AddedFile {
    id: u32,
    content: String,
}

/// GPT-2's printable stand-in for each byte: printable Latin-1 stands for itself, the other
/// bytes take the characters from U+0100 on, in byte order.
pub fn byte_chars() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
    let mut chars = ['\0'; 256];
    let mut next = 0x100u32;
    for b in 0..=255u8 {
        chars[usize::from(b)] = if printable(b) {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(next - 1).expect("U+0100..U+0143 are characters")
        };
    }
    chars
}

impl Tokenizer {
    /// Reads a `tokenizer.json` as Hugging Face's `tokenizers` writes it for GPT-2.
    pub fn from_json(json: &[u8]) -> Result<Self, TokenizerError> {
        let file: File = serde_json::from_slice(json)?;
        let model = file.model;
        if model.kind != "BPE" {
            return Err(TokenizerError::Unsupported(format!(
                "model type {:?}",
                model.kind
            )));
        }
        if model.continuing_subword_prefix.is_some()
            || model.end_of_word_suffix.is_some()
            || model.byte_fallback
        {
            return Err(TokenizerError::Unsupported(
                "subword prefixes, word suffixes or byte fallback".into(),
            ));
        }
        if file.normalizer.as_ref().is_some_and(|n| !n.is_null()) {
            return Err(TokenizerError::Unsupported("a normalizer".into()));
        }
        let (add_prefix_space, use_regex) = match file.pre_tokenizer {
            Some(p) if p.kind == "ByteLevel" => (p.add_prefix_space, p.use_regex),
            Some(p) => {
                return Err(TokenizerError::Unsupported(format!(
                    "pre-tokenizer {:?}",
                    p.kind
                )));
            }
            None => return Err(TokenizerError::Unsupported("no pre-tokenizer".into())),
        };

        let chars = byte_chars();
        let char_byte: HashMap<char, u8> =
            (0..=255u8).map(|b| (chars[usize::from(b)], b)).collect();
        let size = model
            .vocab
            .values()
            .chain(file.added_tokens.iter().map(|a| &a.id))
            .max()
            .map_or(0, |&id| id as usize + 1);
        // Ids are dense in any real vocabulary; a stray huge one would size the table.
        if size > 2 * (model.vocab.len() + file.added_tokens.len()) {
            return Err(TokenizerError::Inconsistent(format!(
                "ids up to {} for {} tokens",
                size - 1,
                model.vocab.len() + file.added_tokens.len()
            )));
        }
        let mut bytes = vec![Vec::new(); size];
        for (token, &id) in &model.vocab {
            bytes[id as usize] = token
                .chars()
                .map(|c| {
                    char_byte.get(&c).copied().ok_or_else(|| {
                        TokenizerError::Unsupported(format!(
                            "vocabulary entry {token:?} is not byte-level"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        let mut byte_ids = [0u32; 256];
        for (b, id) in byte_ids.iter_mut().enumerate() {
            *id = *model.vocab.get(&chars[b].to_string()).ok_or_else(|| {
                TokenizerError::Inconsistent(format!("the vocabulary lacks byte {b:#04x}"))
            })?;
        }
        let mut merges = HashMap::with_capacity(model.merges.len());
        for (rank, merge) in model.merges.iter().enumerate() {
            let (left, right) = match merge {
                MergeFile::Pair(l, r) => (l.as_str(), r.as_str()),
                MergeFile::Joined(s) => s.split_once(' ').ok_or_else(|| {
                    TokenizerError::Inconsistent(format!("merge {s:?} is not two tokens"))
                })?,
            };
            let id = |token: &str| {
                model.vocab.get(token).copied().ok_or_else(|| {
                    TokenizerError::Inconsistent(format!(
                        "merge {left:?} {right:?}: {token:?} is not in the vocabulary"
                    ))
                })
            };
            let merged = id(&format!("{left}{right}"))?;
            merges
                .entry((id(left)?, id(right)?))
                .or_insert((rank as u32, merged));
        }
        let mut added: Vec<(String, u32)> = file
            .added_tokens
            .into_iter()
            .filter(|a| !a.content.is_empty())
            .map(|a| (a.content, a.id))
            .collect();
        for (content, id) in &added {
            bytes[*id as usize] = content.as_bytes().to_vec();
        }
        added.sort_by_key(|(content, _)| std::cmp::Reverse(content.len()));
        Ok(Tokenizer {
            byte_ids,
            merges,
            bytes,
            added,
            add_prefix_space,
            use_regex,
            pattern: Regex::new(PATTERN).expect("the pattern is valid"),
        })
    }

    /// One more than the largest id: the model's vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    /// The id of GPT-2's `<|endoftext|>`, when the tokenizer has it.
    pub fn end_of_text(&self) -> Option<u32> {
        self.added
            .iter()
            .find(|(content, _)| content == "<|endoftext|>")
            .map(|&(_, id)| id)
    }

    /// The ids of `text`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        // Pieces repeat (words do): each is merged once per call.
        let mut seen: HashMap<String, Vec<u32>> = HashMap::new();
        for (part, added) in self.split_added(text) {
            if let Some(id) = added {
                ids.push(id);
                continue;
            }
            // As Hugging Face's byte-level pre-tokenizer does, for each part between added tokens.
            let prefixed;
            let part = if self.add_prefix_space && !part.starts_with(' ') {
                prefixed = format!(" {part}");
                prefixed.as_str()
            } else {
                part
            };
            for piece in self.pieces(part) {
                if let Some(known) = seen.get(piece) {
                    ids.extend_from_slice(known);
                    continue;
                }
                let merged = self.merge(piece);
                ids.extend_from_slice(&merged);
                seen.insert(piece.to_string(), merged);
            }
        }
        ids
    }

    /// The text of `ids`: their bytes joined, invalid UTF-8 replaced. Unknown ids are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .filter_map(|&id| self.bytes.get(id as usize))
            .flatten()
            .copied()
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// `text` cut around its added tokens: `(part, None)` for ordinary text, `(content,
    /// Some(id))` for an added token. At each place the longest added token wins.
    fn split_added<'t>(&self, text: &'t str) -> Vec<(&'t str, Option<u32>)> {
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let next = self
                .added
                .iter()
                .filter_map(|(content, id)| {
                    rest.find(content.as_str()).map(|at| (at, content, *id))
                })
                // Earliest; among those starting together, the longest (listed first).
                .min_by_key(|&(at, _, _)| at);
            let Some((at, content, id)) = next else {
                parts.push((rest, None));
                break;
            };
            if at > 0 {
                parts.push((&rest[..at], None));
            }
            parts.push((&rest[at..at + content.len()], Some(id)));
            rest = &rest[at + content.len()..];
        }
        parts
    }

    /// GPT-2's pieces of `text`. The pattern's last alternatives are `\s+(?!\S)|\s+`: a run of
    /// whitespace followed by something else gives its last character to what follows (so that
    /// `"  word"` is `" "`, `" word"`); the `regex` crate has no lookahead, so a whitespace
    /// match is shortened here instead.
    fn pieces<'t>(&self, text: &'t str) -> Vec<&'t str> {
        if !self.use_regex {
            return vec![text];
        }
        let mut pieces = Vec::new();
        let mut at = 0;
        while at < text.len() {
            let m = self
                .pattern
                .find_at(text, at)
                .expect("every character starts a match");
            debug_assert_eq!(m.start(), at);
            let mut end = m.end();
            let piece = &text[at..end];
            if end < text.len()
                && piece.chars().all(char::is_whitespace)
                && let Some((last, _)) = piece.char_indices().last().filter(|&(i, _)| i > 0)
            {
                end = at + last;
            }
            pieces.push(&text[at..end]);
            at = end;
        }
        pieces
    }

    /// One piece's ids: its bytes' tokens, merged lowest rank first until no merge applies.
    fn merge(&self, piece: &str) -> Vec<u32> {
        let mut symbols: Vec<u32> = piece
            .bytes()
            .map(|b| self.byte_ids[usize::from(b)])
            .collect();
        loop {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| {
                    self.merges
                        .get(&(w[0], w[1]))
                        .map(|&(rank, merged)| (rank, i, merged))
                })
                .min();
            let Some((_, i, merged)) = best else {
                return symbols;
            };
            symbols[i] = merged;
            symbols.remove(i + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `tests/reference/bpe_reference.py` wrote: a trained tokenizer and, for each text,
    /// the ids and the decoded text Hugging Face's `tokenizers` gave.
    const TOKENIZER: &[u8] = include_bytes!("../tests/reference/bpe-tokenizer.json");
    const ENCODINGS: &str = include_str!("../tests/reference/bpe-encodings.json");

    #[derive(Deserialize)]
    struct Encodings {
        vocab_size: usize,
        cases: Vec<Case>,
    }

    #[derive(Deserialize)]
    struct Case {
        text: String,
        ids: Vec<u32>,
        decoded: String,
    }

    #[test]
    fn bpe_matches_the_reference_tokenizer() {
        let tokenizer = Tokenizer::from_json(TOKENIZER).unwrap();
        let reference: Encodings = serde_json::from_str(ENCODINGS).unwrap();
        assert_eq!(tokenizer.vocab_size(), reference.vocab_size);
        for case in &reference.cases {
            assert_eq!(tokenizer.encode(&case.text), case.ids, "{:?}", case.text);
            assert_eq!(tokenizer.decode(&case.ids), case.decoded, "{:?}", case.text);
        }
    }

    #[test]
    fn a_corpus_decodes_back_to_itself_in_fewer_tokens_than_bytes() {
        let tokenizer = Tokenizer::from_json(TOKENIZER).unwrap();
        let text = crate::Corpus::Tales.generate(5_000, 1);
        let ids = tokenizer.encode(&text);
        assert_eq!(tokenizer.decode(&ids), text);
        assert!(
            ids.len() < text.len(),
            "{} ids for {} bytes",
            ids.len(),
            text.len()
        );
        assert!(ids.iter().all(|&id| (id as usize) < tokenizer.vocab_size()));
    }

    #[test]
    fn merges_may_be_written_either_way_and_bad_files_are_named() {
        let mut file: serde_json::Value = serde_json::from_slice(TOKENIZER).unwrap();
        // GPT-2's own file writes each merge as one string, "a b".
        let joined: Vec<serde_json::Value> = file["model"]["merges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| format!("{} {}", m[0].as_str().unwrap(), m[1].as_str().unwrap()).into())
            .collect();
        file["model"]["merges"] = joined.into();
        let older = Tokenizer::from_json(&serde_json::to_vec(&file).unwrap()).unwrap();
        let newer = Tokenizer::from_json(TOKENIZER).unwrap();
        let text = "It was a great film, and I'd see it again.";
        assert_eq!(older.encode(text), newer.encode(text));

        file["model"]["type"] = "WordPiece".into();
        let err = Tokenizer::from_json(&serde_json::to_vec(&file).unwrap()).unwrap_err();
        assert!(err.to_string().contains("WordPiece"), "{err}");
        assert!(matches!(
            Tokenizer::from_json(b"{}"),
            Err(TokenizerError::Json(_))
        ));
    }

    #[test]
    fn every_byte_has_its_own_printable_character() {
        let chars = byte_chars();
        let distinct: std::collections::HashSet<char> = chars.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
        assert_eq!(chars[usize::from(b' ')], 'Ġ');
        assert_eq!(chars[usize::from(b'\n')], 'Ċ');
        assert_eq!(chars[usize::from(b'a')], 'a');
        assert!(chars.iter().all(|c| !c.is_whitespace() && !c.is_control()));
    }
}

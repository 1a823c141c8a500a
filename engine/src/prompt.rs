//! Prompt-based classification: a language model classifies a text by which of a few label
//! words it would write next after a template such as `"{text} It was"`.
//!
//! The model is unchanged; only its read-out is: of the vocabulary's logits at the prompt's last
//! position, the logits of the label words' tokens are the class scores, and the loss is the
//! cross-entropy over them. Under a BPE tokenizer each label word must be one token, as MeZO's
//! label words are. Over bytes a word is read by the first byte where the words differ; the
//! bytes the words share in front (GPT-2's leading space) become the end of every prompt, so
//! `" terrible"` and `" great"` are scored as `t` and `g` after `"… It was "` in a byte-level
//! model and as single tokens under GPT-2's tokenizer.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A job's `[task.prompt]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSpec {
    /// The text the model reads, with `{text}` where the example goes.
    pub template: String,
    /// One word per class, in the classes' order (a CSV's labels sorted, or 0, 1, …).
    pub labels: Vec<String>,
}

/// A prompt that cannot be used, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PromptError {
    #[error("task.prompt.template must contain `{{text}}` once; got {0:?}")]
    Template(String),
    #[error("task.prompt.labels needs 2 to 256 label words; got {0}")]
    LabelCount(usize),
    #[error(
        "task.prompt.labels: {first:?} and {second:?} begin with the same token once their \
         common start is removed, so the model cannot tell them apart at one position"
    )]
    Ambiguous { first: String, second: String },
    #[error("task.prompt.labels: {0:?} has no tokens of its own after the words' common start")]
    Prefix(String),
    #[error(
        "task.prompt.labels: {word:?} is {tokens} tokens under the job's tokenizer; a label word \
         must be one token (try it with or without a leading space)"
    )]
    NotOneToken { word: String, tokens: usize },
}

impl PromptSpec {
    /// Checks the template and the number of labels (the tokens are checked by
    /// [`Prompt::new`], once the tokenizer is known).
    pub fn validate(&self) -> Result<(), PromptError> {
        if self.template.matches("{text}").count() != 1 {
            return Err(PromptError::Template(self.template.clone()));
        }
        if !(2..=256).contains(&self.labels.len()) {
            return Err(PromptError::LabelCount(self.labels.len()));
        }
        Ok(())
    }
}

/// A prompt made concrete for one tokenizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    template: String,
    /// The tokens every label word starts with, appended to every prompt.
    shared: Vec<u32>,
    /// Per class, the token whose logit is its score.
    readout: Vec<u32>,
}

impl Prompt {
    /// The prompt under `encode`: a BPE tokenizer's ids (`whole_tokens`: every label word must
    /// be one token), or bytes (read at the first byte where the words differ).
    pub fn new(
        spec: &PromptSpec,
        encode: impl Fn(&str) -> Vec<u32>,
        whole_tokens: bool,
    ) -> Result<Self, PromptError> {
        spec.validate()?;
        let words: Vec<Vec<u32>> = spec.labels.iter().map(|w| encode(w)).collect();
        if whole_tokens
            && let Some((word, tokens)) = spec.labels.iter().zip(&words).find(|(_, t)| t.len() != 1)
        {
            return Err(PromptError::NotOneToken {
                word: word.clone(),
                tokens: tokens.len(),
            });
        }
        let shared_len = (0..)
            .take_while(|&i| {
                words
                    .iter()
                    .all(|w| w.get(i).is_some() && w.get(i) == words[0].get(i))
            })
            .count();
        let mut readout = Vec::with_capacity(words.len());
        for (label, word) in spec.labels.iter().zip(&words) {
            let Some(&token) = word.get(shared_len) else {
                return Err(PromptError::Prefix(label.clone()));
            };
            if let Some(other) = readout.iter().position(|&t| t == token) {
                return Err(PromptError::Ambiguous {
                    first: spec.labels[other].clone(),
                    second: label.clone(),
                });
            }
            readout.push(token);
        }
        Ok(Prompt {
            template: spec.template.clone(),
            shared: words[0][..shared_len].to_vec(),
            readout,
        })
    }

    /// The tokens the model reads for `text`: the template around it, then the label words'
    /// common start.
    pub fn tokens(&self, text: &str, encode: impl Fn(&str) -> Vec<u32>) -> Vec<u32> {
        let mut tokens = encode(&self.template.replacen("{text}", text, 1));
        tokens.extend_from_slice(&self.shared);
        tokens
    }

    /// Per class, the vocabulary token whose logit scores it.
    pub fn readout(&self) -> &[u32] {
        &self.readout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> Vec<u32> {
        s.bytes().map(u32::from).collect()
    }

    fn spec(template: &str, labels: &[&str]) -> PromptSpec {
        PromptSpec {
            template: template.into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn label_words_are_read_at_their_first_distinct_token() {
        let prompt = Prompt::new(
            &spec("{text} It was", &[" terrible", " great"]),
            bytes,
            false,
        )
        .unwrap();
        assert_eq!(prompt.readout(), [u32::from(b't'), u32::from(b'g')]);
        assert_eq!(prompt.tokens("nice.", bytes), bytes("nice. It was "));
        // Words without a common start read their first tokens after the bare template.
        let plain = Prompt::new(&spec("{text}:", &["no", "yes"]), bytes, false).unwrap();
        assert_eq!(plain.tokens("ok", bytes), bytes("ok:"));
    }

    #[test]
    fn prompts_that_cannot_classify_are_named() {
        let err = |s: PromptSpec| Prompt::new(&s, bytes, false).unwrap_err();
        assert!(matches!(
            err(spec("It was", &["a", "b"])),
            PromptError::Template(_)
        ));
        assert_eq!(err(spec("{text}", &["a"])), PromptError::LabelCount(1));
        assert_eq!(
            err(spec("{text}", &[" good", " great", " bad"])),
            PromptError::Ambiguous {
                first: " good".into(),
                second: " great".into()
            }
        );
        assert_eq!(
            err(spec("{text}", &[" ok", " ok!"])),
            PromptError::Prefix(" ok".into())
        );
        // Under a tokenizer, each word must be one token ("tokens" of two bytes here).
        let pairs = |s: &str| s.as_bytes().chunks(2).map(|c| u32::from(c[0])).collect();
        assert_eq!(
            Prompt::new(&spec("{text}", &["ab", "cde"]), pairs, true).unwrap_err(),
            PromptError::NotOneToken {
                word: "cde".into(),
                tokens: 2
            }
        );
        assert!(Prompt::new(&spec("{text}", &["ab", "cd"]), pairs, true).is_ok());
    }
}

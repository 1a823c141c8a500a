//! Text for the character language model: next-byte examples from any text, and two built-in
//! corpora the project generates itself (no downloads, the same bytes everywhere).
//!
//! An example is the `context` bytes before a position (as floats, the model's input) and the
//! byte at it (the label). The first 90 % of the text trains, the last 10 % is held out, so
//! bits per character are measured on text the model never trained on.

use crate::dataset::{DataError, Dataset, Split};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Held-out examples, at most (evaluation reads them all).
const MAX_TEST_ROWS: usize = 2_000;

/// A built-in text corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Corpus {
    /// Short fables: animals, places, small deeds.
    Tales,
    /// Kitchen instructions: amounts, verbs, times.
    Recipes,
    /// Two-clause reviews (`the soup was cold but the staff was kind.`), each followed by a
    /// verdict, `It was great.` or `It was terrible.`, that follows one of the two clauses
    /// at random. The sentiment is the last clause's (after `but`, the turn), so a model
    /// trained on this text guesses it right from the verdict's position about three times in
    /// four: the prompt task over [`reviews`] has something to gain from fine-tuning.
    Reviews,
}

impl Corpus {
    pub const ALL: [Corpus; 3] = [Corpus::Tales, Corpus::Recipes, Corpus::Reviews];

    pub fn name(self) -> &'static str {
        match self {
            Corpus::Tales => "tales",
            Corpus::Recipes => "recipes",
            Corpus::Reviews => "reviews",
        }
    }

    /// About `bytes` bytes of text drawn from the corpus's grammar with `seed`.
    pub fn generate(self, bytes: usize, seed: u64) -> String {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ self as u64);
        let rng = &mut rng;
        let mut out = String::with_capacity(bytes + 200);
        while out.len() < bytes {
            let sentence = match self {
                Corpus::Tales => {
                    let adjective =
                        pick(rng, &["little", "old", "brave", "quiet", "clever", "tired"]);
                    let who = pick(
                        rng,
                        &["fox", "girl", "miller", "crow", "king", "bear", "boy"],
                    );
                    let verb = pick(rng, &["found", "lost", "carried", "painted", "hid", "sold"]);
                    let thing = pick(
                        rng,
                        &["a silver key", "the red boat", "an apple", "the map"],
                    );
                    let place = pick(
                        rng,
                        &["by the river", "in the forest", "at the mill", "at dawn"],
                    );
                    format!("the {adjective} {who} {verb} {thing} {place}. ")
                }
                Corpus::Recipes => {
                    let verb = pick(rng, &["stir", "whisk", "fold", "bake", "simmer", "chop"]);
                    let amount = pick(
                        rng,
                        &["two cups of", "a pinch of", "three spoons of", "some"],
                    );
                    let food = pick(
                        rng,
                        &["flour", "sugar", "butter", "onions", "rice", "cream"],
                    );
                    let time = pick(rng, &["for ten minutes", "until golden", "gently", "twice"]);
                    format!("{verb} {amount} {food} {time}. ")
                }
                Corpus::Reviews => {
                    let review = Review::draw(rng);
                    let verdict_from_first = rng.next_u32() & 1 == 0;
                    let positive = if verdict_from_first {
                        review.first_positive
                    } else {
                        review.positive
                    };
                    let verdict = if positive { "great" } else { "terrible" };
                    format!("{} It was {verdict}. ", review.text)
                }
            };
            out.push_str(&sentence);
        }
        out
    }
}

/// One of `words`, drawn uniformly (near enough: `words` is short).
fn pick(rng: &mut ChaCha8Rng, words: &[&'static str]) -> &'static str {
    words[(rng.next_u32() as usize) % words.len()]
}

/// One generated review.
struct Review {
    text: String,
    /// The first clause's sentiment.
    first_positive: bool,
    /// The review's sentiment: its last clause's.
    positive: bool,
}

impl Review {
    fn draw(rng: &mut ChaCha8Rng) -> Review {
        const THINGS: [&str; 8] = [
            "soup", "staff", "room", "film", "music", "bread", "view", "service",
        ];
        const GOOD: [&str; 8] = [
            "warm", "friendly", "fresh", "lovely", "clean", "kind", "bright", "tasty",
        ];
        const BAD: [&str; 8] = [
            "cold", "rude", "stale", "dull", "dirty", "slow", "noisy", "bland",
        ];
        let (first, second) = (pick(rng, &THINGS), pick(rng, &THINGS));
        let (first_positive, positive) = (rng.next_u32() & 1 == 1, rng.next_u32() & 1 == 1);
        let mut word = |good| pick(rng, if good { &GOOD } else { &BAD });
        let (a, b) = (word(first_positive), word(positive));
        let joint = if first_positive == positive {
            "and"
        } else {
            "but"
        };
        Review {
            text: format!("the {first} was {a} {joint} the {second} was {b}."),
            first_positive,
            positive,
        }
    }
}

/// `count` labelled reviews (label 1 positive, 0 negative) drawn with `seed`: the texts of
/// [`Corpus::Reviews`] without their verdicts.
pub fn reviews(count: usize, seed: u64) -> Vec<(String, u32)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7265_7669_6577);
    (0..count)
        .map(|_| {
            let review = Review::draw(&mut rng);
            (review.text, u32::from(review.positive))
        })
        .collect()
}

/// A prompt classifier's examples: each text in the prompt's template, as the last `context`
/// of its tokens (padded with `pad` in front), labelled with its class. The first 80 % train.
pub fn prompt_dataset(
    name: &str,
    rows: &[(String, u32)],
    class_names: Vec<String>,
    prompt: &crate::prompt::Prompt,
    encode: impl Fn(&str) -> Vec<u32>,
    pad: u32,
    context: usize,
) -> Result<Dataset, DataError> {
    if rows.len() < 10 {
        return Err(DataError::TooFewRows(rows.len()));
    }
    let cut = rows.len() - ((rows.len() as f64 * 0.2).round() as usize).max(1);
    let split = |rows: &[(String, u32)]| {
        let mut split = Split {
            features: context,
            ..Split::default()
        };
        for (text, label) in rows {
            let tokens = prompt.tokens(text, &encode);
            split.x.extend(context_of(&tokens, context, pad));
            split.y.push(*label);
        }
        split
    };
    Ok(Dataset {
        name: name.to_string(),
        classes: class_names.len(),
        class_names,
        train: split(&rows[..cut]),
        test: split(&rows[cut..]),
    })
}

impl std::str::FromStr for Corpus {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        Corpus::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| DataError::UnknownBuiltin(s.to_string()))
    }
}

/// Next-byte examples from `text` for a model reading `context` previous bytes. Positions
/// before the first `context` bytes see zero bytes in front.
pub fn text_dataset(name: &str, text: &str, context: usize) -> Result<Dataset, DataError> {
    let bytes: Vec<u32> = text.bytes().map(u32::from).collect();
    token_dataset(name, &bytes, 256, 0, context)
}

/// Next-token examples from `tokens` (ids below `vocab`, e.g. from a BPE
/// [`crate::bpe::Tokenizer`]) for a model reading `context` previous tokens; positions before
/// the first `context` tokens see `pad` in front.
pub fn token_dataset(
    name: &str,
    tokens: &[u32],
    vocab: usize,
    pad: u32,
    context: usize,
) -> Result<Dataset, DataError> {
    if tokens.len() < 10 * (context + 1) {
        return Err(DataError::TooLittleText {
            tokens: tokens.len(),
            needed: 10 * (context + 1),
        });
    }
    let cut = tokens.len() * 9 / 10;
    let examples = |range: std::ops::Range<usize>| {
        let mut split = Split {
            features: context,
            ..Split::default()
        };
        for i in range {
            split
                .x
                .extend((0..context).map(|k| match (i + k).checked_sub(context) {
                    Some(j) => tokens[j] as f32,
                    None => pad as f32,
                }));
            split.y.push(tokens[i]);
        }
        split
    };
    let test_end = tokens.len().min(cut + MAX_TEST_ROWS);
    Ok(Dataset {
        name: name.to_string(),
        classes: vocab,
        class_names: Vec::new(),
        train: examples(0..cut),
        test: examples(cut..test_end),
    })
}

/// Bytes of text a built-in corpus gives each peer.
pub const CORPUS_BYTES: usize = 60_000;

/// A built-in corpus as a dataset: [`CORPUS_BYTES`] of text from `seed`.
pub fn corpus_dataset(corpus: Corpus, context: usize, seed: u64) -> Dataset {
    text_dataset(corpus.name(), &corpus.generate(CORPUS_BYTES, seed), context)
        .expect("60 kB of text is enough for any context up to 256")
}

/// Next-token examples from `text` in `tokenizer`'s tokens; positions before the first
/// `context` tokens see its end-of-text token in front (GPT-2's padding), or token 0.
pub fn tokenized_dataset(
    name: &str,
    text: &str,
    tokenizer: &crate::bpe::Tokenizer,
    context: usize,
) -> Result<Dataset, DataError> {
    let pad = tokenizer.end_of_text().unwrap_or(0);
    token_dataset(
        name,
        &tokenizer.encode(text),
        tokenizer.vocab_size(),
        pad,
        context,
    )
}

/// The tokens the model sees as context for its next prediction: the last `context` of
/// `tokens`, padded with `pad` in front.
pub fn context_of(tokens: &[u32], context: usize, pad: u32) -> Vec<f32> {
    let mut row = vec![pad as f32; context];
    let tail = &tokens[tokens.len().saturating_sub(context)..];
    for (slot, &t) in row[context - tail.len()..].iter_mut().zip(tail) {
        *slot = t as f32;
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_dataset_puts_each_text_in_the_template_and_keeps_its_label() {
        let bytes = |s: &str| s.bytes().map(u32::from).collect::<Vec<u32>>();
        let spec = crate::prompt::PromptSpec {
            template: "{text} It was".into(),
            labels: vec![" terrible".into(), " great".into()],
        };
        let prompt = crate::prompt::Prompt::new(&spec, bytes, false).unwrap();
        let rows = reviews(50, 1);
        let names = vec!["negative".to_string(), "positive".to_string()];
        let d = prompt_dataset("reviews", &rows, names, &prompt, bytes, 0, 64).unwrap();
        assert_eq!((d.train.len(), d.test.len(), d.classes), (40, 10, 2));
        let (text, label) = &rows[3];
        let row = &d.train.x[3 * 64..4 * 64];
        let expected = context_of(&bytes(&format!("{text} It was ")), 64, 0);
        assert_eq!(row, expected.as_slice());
        assert_eq!(d.train.y[3], *label);
        assert_eq!(d.test.y[0], rows[40].1);
        assert!(matches!(
            prompt_dataset("few", &rows[..5], vec![], &prompt, bytes, 0, 64),
            Err(DataError::TooFewRows(5))
        ));
    }

    #[test]
    fn a_review_is_labelled_by_its_last_clause_and_the_corpus_gives_verdicts() {
        let good = [
            "warm", "friendly", "fresh", "lovely", "clean", "kind", "bright", "tasty",
        ];
        let rows = reviews(400, 3);
        assert_eq!(
            rows,
            reviews(400, 3),
            "the same seed draws the same reviews"
        );
        let mut turns = 0;
        for (text, label) in &rows {
            let last = text.trim_end_matches('.').rsplit(' ').next().unwrap();
            assert_eq!(*label, u32::from(good.contains(&last)), "{text}");
            turns += usize::from(text.contains(" but "));
        }
        // Both labels, and both kinds of review (a turn with `but`, or none), are common.
        let positive = rows.iter().filter(|(_, l)| *l == 1).count();
        assert!(
            (120..=280).contains(&positive),
            "{positive} of 400 positive"
        );
        assert!((120..=280).contains(&turns), "{turns} of 400 turn");
        let text = Corpus::Reviews.generate(4_000, 1);
        assert!(text.contains(" It was great. ") && text.contains(" It was terrible. "));
        assert_eq!("reviews".parse::<Corpus>().unwrap(), Corpus::Reviews);
    }

    #[test]
    fn examples_are_the_previous_bytes_and_the_next_one() {
        let text = "abcdefghijklmnopqrstuvwxyz".repeat(4);
        let d = text_dataset("abc", &text, 3).unwrap();
        assert_eq!(d.train.len() + d.test.len(), text.len());
        assert_eq!(&d.train.x[..3], &[0.0, 0.0, 0.0]);
        assert_eq!(d.train.y[0], u32::from(b'a'));
        assert_eq!(&d.train.x[3 * 5..3 * 6], &[99.0, 100.0, 101.0]);
        assert_eq!(d.train.y[5], u32::from(b'f'));
        assert_eq!(context_of(&[120, 121], 3, 0), [0.0, 120.0, 121.0]);
        assert!(matches!(
            text_dataset("short", "abc", 3),
            Err(DataError::TooLittleText { .. })
        ));
    }

    #[test]
    fn token_examples_are_the_previous_tokens_padded_and_the_next_one() {
        let tokens: Vec<u32> = (0..40).map(|i| 300 + i).collect();
        let d = token_dataset("ids", &tokens, 400, 7, 2).unwrap();
        assert_eq!(d.classes, 400);
        assert_eq!(d.train.len() + d.test.len(), tokens.len());
        assert_eq!(&d.train.x[..4], &[7.0, 7.0, 7.0, 300.0]);
        assert_eq!(&d.train.y[..2], &[300, 301]);
        assert_eq!(d.test.y[0], 300 + 36);
    }

    #[test]
    fn corpora_are_reproducible_and_differ() {
        let a = Corpus::Tales.generate(2_000, 1);
        assert_eq!(a, Corpus::Tales.generate(2_000, 1));
        assert_ne!(a, Corpus::Tales.generate(2_000, 2));
        assert_ne!(a, Corpus::Recipes.generate(2_000, 1));
        assert!(a.len() >= 2_000 && a.is_ascii());
    }
}

#[cfg(test)]
mod model_tests {
    use crate::model::{Activation, Model, ModelError, ModelSpec};
    use crate::{Job, JobConfig, Replica, block_on, cpu_device};
    use std::sync::Arc;

    fn lm() -> ModelSpec {
        ModelSpec::CharLm {
            embedding: 4,
            hidden: vec![16],
            activation: Activation::Tanh,
        }
    }

    #[test]
    fn a_char_lm_has_an_embedding_table_in_front_of_its_mlp() {
        let m = Model::new(&lm(), 8, 256).unwrap();
        let names: Vec<_> = m.layout().params().iter().map(|p| p.name.clone()).collect();
        assert_eq!(
            names,
            [
                "embedding",
                "layer0.weight",
                "layer0.bias",
                "layer1.weight",
                "layer1.bias"
            ]
        );
        assert_eq!(m.layout().d(), 256 * 4 + 32 * 16 + 16 + 16 * 256 + 256);
        assert_eq!(
            Model::new(&lm(), 8, 1).unwrap_err(),
            ModelError::Vocabulary(1)
        );
        assert_eq!(
            Model::new(&lm(), 8, 5000).unwrap_err(),
            ModelError::Vocabulary(5000)
        );
        assert_eq!(
            Model::new(&lm(), 0, 256).unwrap_err(),
            ModelError::Context(0)
        );
    }

    #[test]
    fn a_char_lm_samples_reproducible_text() {
        let mut config: JobConfig = Job::demo().config;
        config.model = lm();
        config.task.features = 8;
        config.task.classes = 256;
        config.task.dataset = "tales".into();
        let replica = Replica::new(Arc::new(Job::new(config).unwrap()), cpu_device());
        let a = block_on(replica.sample_text(b"the ", 20, 7)).unwrap();
        assert_eq!(a.len(), 20);
        assert_eq!(a, block_on(replica.sample_text(b"the ", 20, 7)).unwrap());
        assert_ne!(a, block_on(replica.sample_text(b"the ", 20, 8)).unwrap());
    }
}

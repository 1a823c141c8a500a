//! Datasets: built-in 2-D toys (spirals, moons, circles) generated from a seed, and a CSV loader.
//!
//! A dataset is a train split and a test split of dense `f32` features with integer labels. Each
//! peer trains on its own shard of the train split; everyone evaluates on the same test split.

pub use crate::dataset::{DataError, Dataset, Split};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use std::f64::consts::{PI, TAU};
use std::str::FromStr;

/// The built-in toy datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Builtin {
    /// Two interleaved spiral arms, one turn each.
    Spirals,
    /// Two interleaving half circles.
    Moons,
    /// A small circle inside a larger one.
    Circles,
}

impl Builtin {
    /// All built-ins, for help texts.
    pub const ALL: [Builtin; 3] = [Builtin::Spirals, Builtin::Moons, Builtin::Circles];

    /// The name used on the command line and in job files.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Spirals => "spirals",
            Builtin::Moons => "moons",
            Builtin::Circles => "circles",
        }
    }

    /// Generates `train + test` points from `seed`, half of each class.
    pub fn generate(self, train: usize, test: usize, seed: u64) -> Dataset {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut all = Split {
            features: 2,
            ..Split::default()
        };
        for i in 0..train + test {
            let class = (i % 2) as u32;
            let point = self.point(class, &mut rng);
            all.push_row(&point, class);
        }
        let rows: Vec<usize> = (0..all.len()).collect();
        Dataset {
            name: self.name().to_string(),
            classes: 2,
            class_names: vec!["0".into(), "1".into()],
            train: all.gather(&rows[..train]),
            test: all.gather(&rows[train..]),
        }
    }

    fn point(self, class: u32, rng: &mut ChaCha8Rng) -> [f32; 2] {
        let noise = |rng: &mut ChaCha8Rng, scale: f64| (unit(rng) * 2.0 - 1.0) * scale;
        let (x, y) = match self {
            Builtin::Spirals => {
                // Radius grows with the angle; sqrt spreads points evenly along the arm.
                let t = unit(rng).sqrt();
                let angle = t * TAU + f64::from(class) * PI;
                (
                    t * angle.cos() + noise(rng, 0.02),
                    t * angle.sin() + noise(rng, 0.02),
                )
            }
            Builtin::Moons => {
                let a = unit(rng) * PI;
                let (x, y) = if class == 0 {
                    (a.cos(), a.sin())
                } else {
                    (1.0 - a.cos(), 0.5 - a.sin())
                };
                // Centre on the origin and fit into [-1, 1].
                (
                    (x - 0.5) / 1.5 + noise(rng, 0.05),
                    (y - 0.25) / 1.5 + noise(rng, 0.05),
                )
            }
            Builtin::Circles => {
                let a = unit(rng) * TAU;
                let r = if class == 0 { 0.9 } else { 0.45 };
                (
                    r * a.cos() + noise(rng, 0.05),
                    r * a.sin() + noise(rng, 0.05),
                )
            }
        };
        [x as f32, y as f32]
    }
}

fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

impl FromStr for Builtin {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        Builtin::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| DataError::UnknownBuiltin(s.to_string()))
    }
}

/// Where a peer's data comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataSource {
    Builtin(Builtin),
    /// A built-in text corpus, for a char LM.
    Corpus(crate::text::Corpus),
    Csv(String),
    /// A text file (`.txt`), for a char LM.
    Text(String),
}

impl FromStr for DataSource {
    type Err = DataError;
    /// `spirals`, `builtin:spirals`, or a path ending in `.csv`.
    fn from_str(s: &str) -> Result<Self, DataError> {
        let name = s.strip_prefix("builtin:").unwrap_or(s);
        if let Ok(b) = name.parse::<Builtin>() {
            return Ok(DataSource::Builtin(b));
        }
        if let Ok(c) = name.parse::<crate::text::Corpus>() {
            return Ok(DataSource::Corpus(c));
        }
        let lower = s.to_ascii_lowercase();
        if lower.ends_with(".csv") {
            return Ok(DataSource::Csv(s.to_string()));
        }
        if lower.ends_with(".txt") {
            return Ok(DataSource::Text(s.to_string()));
        }
        Err(DataError::UnknownBuiltin(s.to_string()))
    }
}

/// A dataset that could not be made.
/// Share of rows held out for testing.
const TEST_FRACTION: f64 = 0.2;

/// Parses a CSV of numeric features with the label in the last column.
///
/// A first row that is not all numbers is a header. Labels may be any strings; classes are
/// numbered in sorted order (numerically when every label is a number). Rows are shuffled with
/// `seed` and split 80/20; features are standardised with the train split's mean and deviation.
pub fn load_csv(name: &str, text: &str, seed: u64) -> Result<Dataset, DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    let mut rows: Vec<(Vec<f32>, String)> = Vec::new();
    let mut width = None;
    for (i, record) in reader.records().enumerate() {
        let line = i as u64 + 1;
        let record = record.map_err(|e| DataError::Csv {
            line: e.position().map_or(line, |p| p.line()),
            message: e.to_string(),
        })?;
        let line = record.position().map_or(line, |p| p.line());
        if record.iter().all(str::is_empty) {
            continue;
        }
        let expected = *width.get_or_insert(record.len());
        if expected < 2 {
            return Err(DataError::TooFewColumns(expected));
        }
        if record.len() != expected {
            return Err(DataError::Ragged {
                line,
                expected,
                got: record.len(),
            });
        }
        let label = record[expected - 1].to_string();
        let mut feats = Vec::with_capacity(expected - 1);
        let mut header = false;
        for (column, value) in record.iter().take(expected - 1).enumerate() {
            match value.parse::<f32>() {
                Ok(v) if v.is_finite() => feats.push(v),
                _ if rows.is_empty() && !header && column == 0 => header = true,
                _ if header => {}
                _ => {
                    return Err(DataError::NotANumber {
                        line,
                        column: column + 1,
                        value: value.to_string(),
                    });
                }
            }
        }
        if header {
            continue;
        }
        rows.push((feats, label));
    }
    if rows.len() < 10 {
        return Err(DataError::TooFewRows(rows.len()));
    }
    let features = width.unwrap_or(0) - 1;
    let class_names = class_names(rows.iter().map(|r| r.1.as_str()))?;
    shuffle(&mut rows, seed);
    let test_rows = ((rows.len() as f64 * TEST_FRACTION).round() as usize).max(1);
    let train_rows = rows.len() - test_rows;

    let mut mean = vec![0.0f64; features];
    let mut var = vec![0.0f64; features];
    for (f, _) in &rows[..train_rows] {
        for (m, &v) in mean.iter_mut().zip(f) {
            *m += f64::from(v) / train_rows as f64;
        }
    }
    for (f, _) in &rows[..train_rows] {
        for ((s, &v), m) in var.iter_mut().zip(f).zip(&mean) {
            *s += (f64::from(v) - m).powi(2) / train_rows as f64;
        }
    }
    let std: Vec<f64> = var.iter().map(|v| v.sqrt().max(1e-12)).collect();

    let class_index: std::collections::HashMap<&str, u32> = class_names
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .collect();
    let mut train = Split {
        features,
        ..Split::default()
    };
    let mut test = train.clone();
    for (i, (f, label)) in rows.iter().enumerate() {
        let row: Vec<f32> = f
            .iter()
            .zip(&mean)
            .zip(&std)
            .map(|((&v, m), s)| ((f64::from(v) - m) / s) as f32)
            .collect();
        let class = class_index[label.as_str()];
        if i < train_rows {
            train.push_row(&row, class);
        } else {
            test.push_row(&row, class);
        }
    }
    Ok(Dataset {
        name: name.to_string(),
        classes: class_names.len(),
        class_names,
        train,
        test,
    })
}

/// A CSV's distinct labels in class order: sorted, numerically when every label is a number.
fn class_names<'a>(labels: impl Iterator<Item = &'a str>) -> Result<Vec<String>, DataError> {
    let mut names: Vec<String> = labels.map(str::to_string).collect();
    names.sort();
    names.dedup();
    if names.iter().all(|l| l.parse::<f64>().is_ok()) {
        names.sort_by(|a, b| {
            a.parse::<f64>()
                .unwrap()
                .total_cmp(&b.parse::<f64>().unwrap())
        });
    }
    if names.len() < 2 {
        return Err(DataError::OneClass(names.remove(0)));
    }
    if names.len() > 256 {
        return Err(DataError::TooManyClasses(names.len()));
    }
    Ok(names)
}

/// A seeded Fisher–Yates shuffle: every platform orders the rows alike.
fn shuffle<T>(rows: &mut [T], seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in (1..rows.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        rows.swap(i, j);
    }
}

/// The data a peer of `job` trains on. `contents` is the text of the file `source` names (a CSV
/// or a `.txt`), read by the caller: from disk natively, from a file picker in a browser.
pub fn for_job(
    job: &crate::Job,
    source: &DataSource,
    contents: Option<&str>,
    seed: u64,
) -> Result<Dataset, DataError> {
    let language = job.model.is_language_model();
    let needs =
        |what: &str| DataError::WrongKind(format!("the job `{}` {what}", job.config.job.name));
    if job.config.task.prompt.is_some() {
        return prompt_data(job, source, contents, seed);
    }
    let contents = |name: &str| {
        contents.ok_or_else(|| DataError::WrongKind(format!("{name}: no contents given")))
    };
    let data = match source {
        DataSource::Builtin(b) if !language => b.generate(4_000, 1_000, seed),
        DataSource::Csv(name) if !language => load_csv(name, contents(name)?, seed)?,
        _ if job.needs_tokenizer() => {
            return Err(needs(
                "reads text through a tokenizer that is not loaded here",
            ));
        }
        DataSource::Corpus(c) if language => match job.tokenizer() {
            None => crate::text::corpus_dataset(*c, job.model.features(), seed),
            Some(tokenizer) => crate::text::tokenized_dataset(
                c.name(),
                &c.generate(crate::text::CORPUS_BYTES, seed),
                tokenizer,
                job.model.features(),
            )?,
        },
        DataSource::Text(name) if language => match job.tokenizer() {
            None => crate::text::text_dataset(name, contents(name)?, job.model.features())?,
            Some(tokenizer) => crate::text::tokenized_dataset(
                name,
                contents(name)?,
                tokenizer,
                job.model.features(),
            )?,
        },
        DataSource::Builtin(_) | DataSource::Csv(_) => {
            return Err(needs(
                "is a character language model: give it text (tales, recipes, reviews or a .txt file)",
            ));
        }
        DataSource::Corpus(_) | DataSource::Text(_) => {
            return Err(needs(
                "classifies points: give it spirals, moons, circles or a .csv file",
            ));
        }
    };
    if data.features() != job.model.features() || data.classes > job.model.classes() {
        return Err(DataError::WrongKind(format!(
            "{} has {} features and {} classes; the job `{}` reads {} features and predicts {} \
             classes",
            data.name,
            data.features(),
            data.classes,
            job.config.job.name,
            job.model.features(),
            job.model.classes()
        )));
    }
    Ok(data)
}

/// Labelled reviews drawn for a prompt classifier, per peer (4 000 train, 1 000 test).
const REVIEWS: usize = 5_000;

/// A prompt classifier's data: the built-in reviews, or a CSV of `text,label`.
fn prompt_data(
    job: &crate::Job,
    source: &DataSource,
    contents: Option<&str>,
    seed: u64,
) -> Result<Dataset, DataError> {
    let name = &job.config.job.name;
    let Some(prompt) = job.prompt() else {
        return Err(DataError::WrongKind(format!(
            "the job `{name}` reads text through a tokenizer that is not loaded here"
        )));
    };
    let (label, texts) = match source {
        DataSource::Corpus(crate::text::Corpus::Reviews) => (
            "reviews".to_string(),
            LabelledTexts {
                rows: crate::text::reviews(REVIEWS, seed),
                class_names: vec!["negative".into(), "positive".into()],
            },
        ),
        DataSource::Csv(path) => {
            let text = contents
                .ok_or_else(|| DataError::WrongKind(format!("{path}: no contents given")))?;
            (path.clone(), load_labelled_texts(text, seed)?)
        }
        _ => {
            return Err(DataError::WrongKind(format!(
                "the job `{name}` classifies texts by prompt: give it reviews or a CSV of \
                 text,label"
            )));
        }
    };
    let words = prompt.readout().len();
    if texts.class_names.len() != words {
        return Err(DataError::WrongKind(format!(
            "{label} has {} classes ({}); the job `{name}` has {words} label words, one per \
             class in sorted order",
            texts.class_names.len(),
            texts.class_names.join(", ")
        )));
    }
    crate::text::prompt_dataset(
        &label,
        &texts.rows,
        texts.class_names,
        prompt,
        |text| job.encode(text),
        job.pad_token(),
        job.model.features(),
    )
}

/// Texts with their classes, as [`load_labelled_texts`] reads them.
#[derive(Debug, Clone)]
pub struct LabelledTexts {
    /// Each text with its class index.
    pub rows: Vec<(String, u32)>,
    /// The label each class index stands for.
    pub class_names: Vec<String>,
}

/// Parses a CSV whose first row is the header `text,label` and whose other rows are a text and
/// its label, shuffled with `seed`. Classes are numbered in sorted order of their labels
/// (numerically when every label is a number), as [`load_csv`] numbers them.
pub fn load_labelled_texts(text: &str, seed: u64) -> Result<LabelledTexts, DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut header = false;
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| DataError::Csv {
            line: e.position().map_or(i as u64 + 1, |p| p.line()),
            message: e.to_string(),
        })?;
        let line = record.position().map_or(i as u64 + 1, |p| p.line());
        if record.iter().all(str::is_empty) {
            continue;
        }
        if !header {
            let names: Vec<String> = record.iter().map(str::to_ascii_lowercase).collect();
            if names != ["text", "label"] {
                return Err(DataError::TextHeader(
                    record.iter().collect::<Vec<_>>().join(","),
                ));
            }
            header = true;
            continue;
        }
        if record.len() != 2 {
            return Err(DataError::Ragged {
                line,
                expected: 2,
                got: record.len(),
            });
        }
        rows.push((record[0].to_string(), record[1].to_string()));
    }
    if rows.len() < 10 {
        return Err(DataError::TooFewRows(rows.len()));
    }
    let class_names = class_names(rows.iter().map(|r| r.1.as_str()))?;
    shuffle(&mut rows, seed);
    let rows = rows
        .into_iter()
        .map(|(text, label)| {
            let class = class_names
                .iter()
                .position(|c| *c == label)
                .expect("listed");
            (text, class as u32)
        })
        .collect();
    Ok(LabelledTexts { rows, class_names })
}

/// Reads and parses a CSV file (see [`load_csv`]).
pub fn load_csv_file(path: &str, seed: u64) -> Result<Dataset, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Read {
        path: path.to_string(),
        source,
    })?;
    load_csv(path, &text, seed)
}

/// Draws training batches, with replacement, from one peer's shard.
#[derive(Debug, Clone)]
pub struct BatchSampler {
    rng: ChaCha8Rng,
}

impl BatchSampler {
    /// A sampler whose draws are fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        BatchSampler {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// `size` rows drawn uniformly from `split`.
    pub fn sample(&mut self, split: &Split, size: usize) -> Split {
        let n = split.len() as u64;
        let rows: Vec<usize> = (0..size)
            .map(|_| (self.rng.next_u64() % n) as usize)
            .collect();
        split.gather(&rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_seeded_and_balanced() {
        for b in Builtin::ALL {
            let a = b.generate(200, 100, 5);
            assert_eq!(a, b.generate(200, 100, 5));
            assert_ne!(a.train.x, b.generate(200, 100, 6).train.x);
            assert_eq!(a.train.len(), 200);
            assert_eq!(a.test.len(), 100);
            assert_eq!(a.train.y.iter().filter(|&&y| y == 1).count(), 100);
            assert!(
                a.train.x.iter().all(|v| v.abs() <= 1.2),
                "{b:?} fits in [-1.2, 1.2]"
            );
        }
    }

    #[test]
    fn shards_are_disjoint_and_cover_the_split() {
        let d = Builtin::Moons.generate(103, 10, 1);
        let total: usize = (0..4).map(|i| d.train.shard(i, 4).len()).sum();
        assert_eq!(total, 103);
        assert_ne!(d.train.shard(0, 4).x, d.train.shard(1, 4).x);
    }

    #[test]
    fn data_source_parses_names_and_paths() {
        assert_eq!(
            "spirals".parse::<DataSource>().unwrap(),
            DataSource::Builtin(Builtin::Spirals)
        );
        assert_eq!(
            "builtin:circles".parse::<DataSource>().unwrap(),
            DataSource::Builtin(Builtin::Circles)
        );
        assert_eq!(
            "my/data.CSV".parse::<DataSource>().unwrap(),
            DataSource::Csv("my/data.CSV".into())
        );
        assert!("swirls".parse::<DataSource>().is_err());
    }

    fn csv_rows(n: usize) -> String {
        let mut s = String::from("a,b,label\n");
        for i in 0..n {
            s += &format!(
                "{},{},{}\n",
                i,
                i * 2,
                if i % 3 == 0 { "cat" } else { "dog" }
            );
        }
        s
    }

    #[test]
    fn csv_with_header_and_string_labels_loads() {
        let d = load_csv("t", &csv_rows(50), 1).unwrap();
        assert_eq!(d.features(), 2);
        assert_eq!(d.class_names, ["cat", "dog"]);
        assert_eq!(d.train.len() + d.test.len(), 50);
        assert_eq!(d.test.len(), 10);
        let mean: f32 = d.train.x.iter().step_by(2).sum::<f32>() / d.train.len() as f32;
        assert!(
            mean.abs() < 1e-4,
            "standardised features have mean 0, got {mean}"
        );
    }

    #[test]
    fn csv_numeric_labels_sort_numerically() {
        let mut s = String::new();
        for i in 0..30 {
            s += &format!("{i},{}\n", [2, 10, 1][i % 3]);
        }
        let d = load_csv("t", &s, 1).unwrap();
        assert_eq!(d.class_names, ["1", "2", "10"]);
    }

    #[test]
    fn bad_csv_files_get_clear_errors() {
        let ragged = csv_rows(20) + "1,2\n";
        assert!(matches!(
            load_csv("t", &ragged, 1),
            Err(DataError::Ragged {
                expected: 3,
                got: 2,
                ..
            })
        ));
        let nan = csv_rows(20) + "1,x,dog\n";
        let err = load_csv("t", &nan, 1).unwrap_err();
        assert!(
            matches!(err, DataError::NotANumber { column: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("`x` is not a number"));
        assert!(matches!(
            load_csv("t", &csv_rows(5), 1),
            Err(DataError::TooFewRows(5))
        ));
        assert!(matches!(
            load_csv("t", "1\n2\n", 1),
            Err(DataError::TooFewColumns(1))
        ));
        let one = (0..20).map(|i| format!("{i},x\n")).collect::<String>();
        assert!(matches!(
            load_csv("t", &one, 1),
            Err(DataError::OneClass(_))
        ));
        assert!(matches!(
            load_csv_file("/nonexistent/file.csv", 1),
            Err(DataError::Read { .. })
        ));
    }
}

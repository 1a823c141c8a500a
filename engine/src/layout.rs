//! The stable parameter order of a model: named tensors laid end to end in one flat `θ`.
//!
//! Everything that touches weights (directions, updates, hashes, snapshots) goes through this
//! order, so it is part of a model's identity: reordering parameters forks every replica.

/// One named tensor within the flat parameter vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
}

impl ParamSpec {
    /// Number of scalars in this tensor.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True for a tensor with no scalars.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The index range of this tensor within `θ`.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// The parameters of a model, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamLayout {
    params: Vec<ParamSpec>,
    d: usize,
}

impl ParamLayout {
    /// Appends a tensor after the ones already there.
    pub fn push(&mut self, name: impl Into<String>, shape: &[usize]) {
        let spec = ParamSpec {
            name: name.into(),
            shape: shape.to_vec(),
            offset: self.d,
        };
        self.d += spec.len();
        self.params.push(spec);
    }

    /// Total parameter count `d`.
    pub fn d(&self) -> usize {
        self.d
    }

    /// The tensors in order.
    pub fn params(&self) -> &[ParamSpec] {
        &self.params
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }
}

//! The playground's grid: where the model's class probabilities are drawn.

/// The bounding box of 2-feature points, with a margin.
pub fn extent_of(xy: &[f32]) -> [f32; 4] {
    let (mut x0, mut x1, mut y0, mut y1) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
    for p in xy.chunks_exact(2) {
        x0 = x0.min(p[0]);
        x1 = x1.max(p[0]);
        y0 = y0.min(p[1]);
        y1 = y1.max(p[1]);
    }
    let mx = (x1 - x0).max(1e-3) * 0.08;
    let my = (y1 - y0).max(1e-3) * 0.08;
    [x0 - mx, x1 + mx, y0 - my, y1 + my]
}

/// Cell centres of a `size × size` grid over `extent`, rows from the top (`y_max`) down.
pub fn grid_points(extent: [f32; 4], size: u32) -> Vec<f32> {
    let [x0, x1, y0, y1] = extent;
    let n = size as f32;
    let mut out = Vec::with_capacity((size * size * 2) as usize);
    for row in 0..size {
        let y = y1 - (row as f32 + 0.5) / n * (y1 - y0);
        for col in 0..size {
            out.push(x0 + (col as f32 + 0.5) / n * (x1 - x0));
            out.push(y);
        }
    }
    out
}

// The decision boundary: class probabilities over a grid, as an image, with the tab's points.

const PALETTE = [
  [230, 120, 30],
  [36, 87, 197],
  [28, 124, 60],
  [179, 38, 30],
  [120, 60, 170],
  [90, 90, 90],
];

function colour(k) {
  return PALETTE[k % PALETTE.length];
}

export class Playground {
  constructor(canvas) {
    this.canvas = canvas;
    this.cells = document.createElement('canvas');
    this.points = null;
    this.labels = null;
    this.model = null;
  }

  setData(points, labels) {
    this.points = points;
    this.labels = labels;
    this.draw();
  }

  setModel(model) {
    if (!model.probs.length) return;
    this.model = model;
    this.draw();
  }

  draw() {
    const ctx = this.canvas.getContext('2d');
    const { width, height } = this.canvas;
    ctx.clearRect(0, 0, width, height);
    const m = this.model;
    if (m) {
      const { size, classes, probs } = m;
      this.cells.width = size;
      this.cells.height = size;
      const cellsCtx = this.cells.getContext('2d');
      const image = cellsCtx.createImageData(size, size);
      for (let i = 0; i < size * size; i++) {
        let best = 0;
        for (let k = 1; k < classes; k++) {
          if (probs[i * classes + k] > probs[i * classes + best]) best = k;
        }
        // Confident regions are saturated, uncertain ones fade to white.
        const confidence = (probs[i * classes + best] - 1 / classes) / (1 - 1 / classes);
        const [r, g, b] = colour(best);
        const a = 0.15 + 0.55 * Math.max(0, confidence);
        image.data.set([255 - a * (255 - r), 255 - a * (255 - g), 255 - a * (255 - b), 255], i * 4);
      }
      cellsCtx.putImageData(image, 0, 0);
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(this.cells, 0, 0, width, height);
    }
    if (this.points && m) {
      const [x0, x1, y0, y1] = m.extent;
      for (let i = 0; i < this.labels.length; i++) {
        const px = ((this.points[2 * i] - x0) / (x1 - x0)) * width;
        const py = ((y1 - this.points[2 * i + 1]) / (y1 - y0)) * height;
        const [r, g, b] = colour(this.labels[i]);
        ctx.fillStyle = `rgb(${r},${g},${b})`;
        ctx.beginPath();
        ctx.arc(px, py, 2.2, 0, 2 * Math.PI);
        ctx.fill();
      }
    }
  }
}

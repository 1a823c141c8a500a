// Live charts with uPlot: loss (this tab, the swarm), activity (contributions/s, peers) and, for a
// classifier, this tab's test accuracy.
import uPlot from './vendor/uPlot.esm.js';

const WINDOW_S = 600;

function chart(target, title, series, axes) {
  const width = () => Math.max(260, target.clientWidth);
  const plot = new uPlot(
    {
      title,
      width: width(),
      height: 220,
      scales: { x: { time: true } },
      series: [{}, ...series],
      axes,
    },
    [[], ...series.map(() => [])],
    target,
  );
  new ResizeObserver(() => plot.setSize({ width: width(), height: 220 })).observe(target);
  return plot;
}

class Series {
  constructor(plot, n) {
    this.plot = plot;
    this.data = Array.from({ length: n + 1 }, () => []);
  }

  push(t, values) {
    this.data[0].push(t);
    values.forEach((v, i) => this.data[i + 1].push(v ?? null));
    while (this.data[0].length && t - this.data[0][0] > WINDOW_S) {
      for (const column of this.data) column.shift();
    }
    this.plot.setData(this.data);
  }
}

export class Charts {
  constructor(lossTarget, rateTarget, accuracyTarget) {
    this.loss = new Series(
      chart(lossTarget, 'Loss', [
        { label: 'this tab', stroke: '#e6781e', width: 2 },
        { label: 'swarm (last report)', stroke: '#2457c5', width: 2 },
      ]),
      2,
    );
    this.rate = new Series(
      chart(
        rateTarget,
        'Activity',
        [
          { label: 'contributions/s (swarm)', stroke: '#1c7c3c', width: 2, scale: 'rate' },
          { label: 'contributions/s (this tab)', stroke: '#e6781e', width: 2, scale: 'rate' },
          { label: 'peers online', stroke: '#7a3caa', width: 2, scale: 'peers' },
        ],
        [{}, { scale: 'rate' }, { scale: 'peers', side: 1, grid: { show: false } }],
      ),
      3,
    );
    this.accuracy = new Series(
      chart(
        accuracyTarget,
        'Test accuracy',
        [{ label: 'this tab (%)', stroke: '#e6781e', width: 2 }],
        [{}, { values: (_, ticks) => ticks.map((t) => `${t} %`) }],
      ),
      1,
    );
  }

  addAccuracy(accuracy) {
    this.accuracy.push(Date.now() / 1000, [accuracy * 100]);
  }

  addLoss(local, swarm) {
    this.loss.push(Date.now() / 1000, [local, swarm]);
  }

  addActivity(swarmRate, tabRate, peers) {
    this.rate.push(Date.now() / 1000, [swarmRate, tabRate, peers]);
  }
}

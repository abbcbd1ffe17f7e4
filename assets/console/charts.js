// kiln console: the charts. Curves through the vendored uPlot; explanation bars, confusion
// matrices and the residual box plot are plain elements and a canvas. No inline styles:
// sizes and colours are set through the DOM (element.style), which the CSP allows.
'use strict';

window.KilnCharts = (function () {
  const COLORS = ['#2563eb', '#ea580c', '#16a34a', '#9333ea', '#dc2626', '#0891b2'];

  function clear(container) {
    while (container.firstChild) container.removeChild(container.firstChild);
  }

  // A line chart over epochs: `names` are the series (e.g. ['loss', 'val_loss']).
  function curves(container, names) {
    clear(container);
    const data = [[]].concat(names.map(() => []));
    const width = Math.max(280, container.clientWidth || 480);
    const opts = {
      width: width,
      height: 240,
      scales: { x: { time: false } },
      axes: [{ label: 'epoch' }, {}],
      series: [{ label: 'epoch' }].concat(names.map((n, i) => ({
        label: n,
        stroke: COLORS[i % COLORS.length],
        width: 2,
        dash: n.startsWith('val_') ? [6, 4] : undefined,
        spanGaps: true,
      }))),
      legend: { live: true },
    };
    const plot = new uPlot(opts, data, container);
    let points = 0;
    return {
      // One epoch: x and a value (or null) per series.
      push(x, values) {
        data[0].push(x);
        values.forEach((v, i) => data[i + 1].push(Number.isFinite(v) ? v : null));
        points += 1;
        plot.setData(data);
        container.dataset.points = String(points);
      },
      points() { return points; },
    };
  }

  // Horizontal bars, one per column: positive to the right, negative to the left of a
  // shared zero line.
  function bars(container, entries) {
    clear(container);
    const max = Math.max(1e-12, ...entries.map(([, v]) => Math.abs(v)));
    for (const [name, value] of entries) {
      const row = document.createElement('div');
      row.className = 'bar-row';
      const label = document.createElement('span');
      label.className = 'bar-label';
      label.textContent = name;
      const track = document.createElement('span');
      track.className = 'bar-track';
      const bar = document.createElement('span');
      bar.className = 'bar ' + (value >= 0 ? 'pos' : 'neg');
      const half = (Math.abs(value) / max) * 50;
      bar.style.width = half + '%';
      bar.style.left = (value >= 0 ? 50 : 50 - half) + '%';
      track.appendChild(bar);
      const num = document.createElement('span');
      num.className = 'bar-value';
      num.textContent = fmt(value);
      row.append(label, track, num);
      container.appendChild(row);
    }
  }

  // `matrix[actual][predicted]`, shaded by each row's share.
  function confusion(container, labels, matrix) {
    clear(container);
    if (!Array.isArray(matrix) || matrix.length === 0) return;
    const names = labels && labels.length === matrix.length ? labels : matrix.map((_, i) => String(i));
    const table = document.createElement('table');
    table.className = 'confusion';
    const caption = document.createElement('caption');
    caption.textContent = 'Confusion matrix (rows: actual, columns: predicted)';
    table.appendChild(caption);
    const head = table.createTHead().insertRow();
    head.appendChild(document.createElement('th'));
    for (const n of names) {
      const th = document.createElement('th');
      th.textContent = n;
      head.appendChild(th);
    }
    const body = table.createTBody();
    matrix.forEach((row, i) => {
      const tr = body.insertRow();
      const th = document.createElement('th');
      th.textContent = names[i];
      tr.appendChild(th);
      const total = row.reduce((a, b) => a + b, 0) || 1;
      row.forEach((count, j) => {
        const td = tr.insertCell();
        td.textContent = String(count);
        const share = count / total;
        td.style.backgroundColor = (i === j ? 'rgba(22, 163, 74, ' : 'rgba(220, 38, 38, ') + (0.08 + 0.6 * share).toFixed(3) + ')';
      });
    });
    container.appendChild(table);
  }

  // The residuals' distribution (predicted − actual) as a box plot: whiskers at min and max,
  // the box between the quartiles, a line at the median and a mark at the mean.
  function residuals(container, s) {
    clear(container);
    const canvas = document.createElement('canvas');
    const width = Math.max(280, container.clientWidth || 480);
    const height = 120;
    const ratio = window.devicePixelRatio || 1;
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    canvas.style.width = width + 'px';
    canvas.style.height = height + 'px';
    canvas.setAttribute('aria-label', 'Residual box plot');
    container.appendChild(canvas);
    // `:evaluate` names the quartiles p25 and p75.
    s = Object.assign({}, s, { q1: s.p25 !== undefined ? s.p25 : s.q1, q3: s.p75 !== undefined ? s.p75 : s.q3 });
    const ctx = canvas.getContext('2d');
    ctx.scale(ratio, ratio);
    const lo = Math.min(s.min, 0), hi = Math.max(s.max, 0);
    const pad = 30, span = (hi - lo) || 1;
    const x = (v) => pad + ((v - lo) / span) * (width - 2 * pad);
    const mid = 50;
    ctx.strokeStyle = '#9ca3af';
    ctx.setLineDash([4, 4]);
    ctx.beginPath(); ctx.moveTo(x(0), 10); ctx.lineTo(x(0), 90); ctx.stroke();
    ctx.setLineDash([]);
    ctx.strokeStyle = '#1f2937';
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    ctx.moveTo(x(s.min), mid); ctx.lineTo(x(s.q1), mid);
    ctx.moveTo(x(s.q3), mid); ctx.lineTo(x(s.max), mid);
    ctx.moveTo(x(s.min), mid - 12); ctx.lineTo(x(s.min), mid + 12);
    ctx.moveTo(x(s.max), mid - 12); ctx.lineTo(x(s.max), mid + 12);
    ctx.stroke();
    ctx.fillStyle = 'rgba(37, 99, 235, 0.25)';
    ctx.fillRect(x(s.q1), mid - 20, x(s.q3) - x(s.q1), 40);
    ctx.strokeRect(x(s.q1), mid - 20, x(s.q3) - x(s.q1), 40);
    ctx.strokeStyle = '#2563eb'; ctx.lineWidth = 3;
    ctx.beginPath(); ctx.moveTo(x(s.median), mid - 20); ctx.lineTo(x(s.median), mid + 20); ctx.stroke();
    ctx.fillStyle = '#ea580c';
    ctx.beginPath(); ctx.arc(x(s.mean), mid, 4, 0, 2 * Math.PI); ctx.fill();
    ctx.fillStyle = '#374151';
    ctx.font = '12px sans-serif';
    ctx.textAlign = 'center';
    for (const [v, t] of [[s.min, 'min'], [s.q1, 'p25'], [s.median, 'median'], [s.q3, 'p75'], [s.max, 'max']]) {
      ctx.fillText(t, x(v), 88);
      ctx.fillText(fmt(v), x(v), 104);
    }
    ctx.fillText('residual = predicted − actual (0 dashed, mean ● ' + fmt(s.mean) + ', std ' + fmt(s.std) + ')', width / 2, 118);
  }

  function fmt(v) {
    if (v === null || v === undefined) return '–';
    if (typeof v !== 'number') return String(v);
    if (!Number.isFinite(v)) return String(v);
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e6) ? v.toExponential(3) : v.toFixed(4).replace(/0+$/, '').replace(/\.$/, '');
  }

  return { curves, bars, confusion, residuals, fmt };
})();

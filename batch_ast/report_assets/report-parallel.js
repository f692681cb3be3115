// Parallel coordinates: a sample of lines, an axis per varying column, brushing into the filter.
const MAX_PARALLEL = 2000, SAMPLE_SEED = 1;
function sampleOf(items, k) {
  // k items drawn at random (a seeded generator, mulberry32: the same page draws the same lines),
  // in their order: the first k in table order showed one content file of a 20,000-row study
  if (items.length <= k) return items;
  let seed = SAMPLE_SEED;
  const random = () => { seed = (seed + 0x6D2B79F5) | 0; let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t; return ((t ^ (t >>> 14)) >>> 0) / 4294967296; };
  const idx = items.map((_, i) => i);
  for (let i = 0; i < k; i++) { const j = i + Math.floor(random() * (idx.length - i)); [idx[i], idx[j]] = [idx[j], idx[i]]; }
  return idx.slice(0, k).sort((x, y) => x - y).map(i => items[i]);
}
function parallelDims(items, groups, y) {
  // an axis per column that varies among the lines: the inputs, the hyperparameters but the seed
  // (in the aggregated view: the columns grouped by), the scatter's metric last; in the order the
  // user gave (S.axes: a click on an axis's name moves it one place left)
  const candidates = groups ? aggKeys() : ['content_name', 'style_name'].concat(D.params);
  const varies = d => d !== 'seed' && new Set(items.map(p => p[d])).size > 1;
  const dims = candidates.filter((d, i, all) => all.indexOf(d) === i && varies(d)).concat([y]);
  const rank = d => { const i = (S.axes || []).indexOf(d); return i < 0 ? 1000 + dims.indexOf(d) : i; };
  return dims.sort((a, b) => rank(a) - rank(b));
}
function moveAxisLeft(dim) {
  const order = PARALLEL_AXES.map(a => a.d), i = order.indexOf(dim);
  if (i > 0) [order[i - 1], order[i]] = [order[i], order[i - 1]];
  S.axes = order; render(); writeHash();
}
function drawParallel(rows, groups) {
  // parallel coordinates: one axis per varying column (a log axis where it spans two decades), the
  // scatter's metric last; a line per ok row (or group: its means), coloured as the charts are;
  // at most MAX_PARALLEL lines, a seeded random sample beyond. Dragging along an axis brushes it:
  // the range (or the categories) becomes filter terms, which filter the table and every chart and
  // land in the address; a click on an axis clears its brush.
  const y = $('sy').value, H = 300, box = $('parallel');
  const { dims, items, shown, W, axis, at } = remembered('parallel', [rows, groups, y, JSON.stringify(S.axes)], () => {
    const pool = (groups || rows.filter(r => r.status === 'ok')).filter(p => typeof p[y] === 'number');
    const dims = parallelDims(pool, groups, y);
    const items = pool.filter(p => dims.every(d => p[d] !== null && p[d] !== undefined));
    if (dims.length < 2 || !items.length) return { dims, items };
    const shown = sampleOf(items, MAX_PARALLEL);
    // 110 px an axis (eight axes in 600 px wrote their names over each other), room at the sides
    // (100 px at the left: a first axis's category labels, 14 characters, were cut)
    const W = Math.min(1300, Math.max(600, 110 * dims.length + 110)), left = 100, gap = (W - left - 90) / (dims.length - 1);
    const axis = dims.map((d, i) => {
      const x = left + i * gap, vals = shown.map(p => p[d]);
      if (vals.every(v => typeof v === 'number')) {
        const log = vals.every(v => v > 0) && Math.max(...vals) / Math.min(...vals) >= 100;
        return { d, x, s: scale(vals, H - 30, 20, log), log };
      }
      const cats = [...new Set(vals.map(String))].sort();
      const s = v => 20 + (cats.indexOf(String(v)) + 0.5) / cats.length * (H - 50);
      return { d, x, s, cats };
    });
    return { dims, items, shown, W, axis, at: shown.map(p => axis.map(a => a.s(p[a.d]))) };
  });
  box.dataset.lines = 0; box.dataset.dims = dims.join(',');
  if (dims.length < 2 || !items.length) { box.innerHTML = '<p class="muted">parallel coordinates need a column that varies among ok rows</p>'; return; }
  const colour = colourer(shown);
  PARALLEL_AXES = axis;
  const onCanvas = shown.length > CANVAS_ABOVE / 3;  // a polyline is several marks
  const lines = onCanvas ? '' : shown.map(p => '<polyline fill="none" stroke="' + colour(p) + '" stroke-opacity="' + (shown.length > 500 ? 0.2 : 0.45) + '" points="' +
    axis.map(a => a.x.toFixed(1) + ',' + a.s(p[a.d]).toFixed(1)).join(' ') + '"><title>' +
    esc((groups ? aggKeys().map(c => fmt(p[c])).join(', ') : title(p)) + ': ' + y + ' ' + fmt(p[y])) + '</title></polyline>').join('');
  const { terms } = parseTerms(S.filter);
  let brushes = 0;
  const axes = axis.map(a => {
    const t = (v, yy) => '<text class="tick" x="' + (a.x - 4).toFixed(1) + '" y="' + (yy + 3).toFixed(1) + '" font-size="10" fill="#333" text-anchor="end">' + esc(fmt(v)) + '</text>';
    const marks = a.cats ? a.cats.map(c => t(c.length > 14 ? c.slice(0, 13) + '\u2026' : c, a.s(c))).join('') : tickValues(a.s).map(v => t(v, a.s(v))).join('');
    const span = brushSpan(a, terms.filter(term => term.col === a.d));
    if (span) brushes++;
    return '<line x1="' + a.x.toFixed(1) + '" x2="' + a.x.toFixed(1) + '" y1="20" y2="' + (H - 30) + '" stroke="#888"/>' + marks +
      (span ? '<rect class="brush" x="' + (a.x - 6).toFixed(1) + '" width="12" y="' + span[0].toFixed(1) + '" height="' + Math.max(2, span[1] - span[0]).toFixed(1) + '"/>' : '') +
      '<rect class="brush-zone" data-dim="' + esc(a.d) + '" x="' + (a.x - 9).toFixed(1) + '" width="18" y="16" height="' + (H - 42) + '"><title>drag to brush ' + esc(a.d) + '; click to clear</title></rect>' +
      '<text class="axis-name" data-action="axis-left" data-dim="' + esc(a.d) + '" x="' + a.x.toFixed(1) + '" y="' + (H - 12) +
      '" font-size="10" text-anchor="middle"><title>click to move this axis one place left</title>' + esc(LABEL[a.d] || a.d) + (a.log ? ' (log)' : '') + '</text>';
  }).join('');
  box.dataset.lines = shown.length; box.dataset.brushes = brushes; box.dataset.canvas = onCanvas ? 1 : 0;
  const note = (items.length > shown.length ? '<p class="muted" id="parallel-sample">a random sample of ' + shown.length + ' of ' + items.length +
      ' lines (seed ' + SAMPLE_SEED + '); brushing filters every row</p>' : '') + colour.legend;
  if (!onCanvas) { box.innerHTML = svg(W, H, lines + axes) + note; return; }
  const ctx = plotWithCanvas(box, W, H, svg(W, H, axes), note).getContext('2d');
  ctx.globalAlpha = shown.length > 500 ? 0.2 : 0.45;
  for (const [c, members] of byColour(shown, colour)) {
    ctx.strokeStyle = c;
    for (const i of members) {
      ctx.beginPath();
      axis.forEach((a, k) => { if (k) ctx.lineTo(a.x, at[i][k]); else ctx.moveTo(a.x, at[i][k]); });
      ctx.stroke();
    }
  }
}
let PARALLEL_AXES = [];
function brushSpan(a, terms) {
  // the pixel span [top, bottom] a column's filter terms cover on its axis, or null
  if (!terms.length) return null;
  if (a.cats) {
    const on = terms.filter(t => t.op === '=').flatMap(t => t.vals).filter(v => a.cats.includes(v));
    if (!on.length) return null;
    const ys = on.map(v => a.s(v)), half = (a.s(a.cats[0]) - 20) || 5;
    return [Math.min(...ys) - half, Math.max(...ys) + half];
  }
  const lo = terms.find(t => t.op === '>=' || t.op === '>'), hi = terms.find(t => t.op === '<=' || t.op === '<');
  if (!lo && !hi) return null;
  const ys = [hi ? a.s(hi.n[0]) : 20, lo ? a.s(lo.n[0]) : a.s.invert ? a.s(a.s.domain[0]) : 270];
  return [Math.min(...ys), Math.max(...ys)];
}
function brushTerms(a, y0, y1) {
  // filter terms for a brush from pixel y0 to y1 on axis a ([] where it selects nothing)
  const top = Math.min(y0, y1), bottom = Math.max(y0, y1);
  if (a.cats) {
    const on = a.cats.filter(c => a.s(c) >= top && a.s(c) <= bottom);
    return on.length ? [a.d + '=' + on.join(',')] : [];
  }
  const v0 = a.s.invert(bottom), v1 = a.s.invert(top), round = v => parseFloat(v.toPrecision(6));
  return [a.d + '>=' + round(Math.min(v0, v1)), a.d + '<=' + round(Math.max(v0, v1))];
}
function setColumnTerms(col, terms) {
  S.filter = termsWithout(S.filter, col).concat(terms).join(' ');
  $('filter').value = S.filter; S.page = 0; render(); writeHash(); syncWidgets();
}
function brushing(box) {
  // drag on an axis of the parallel coordinates: a live rectangle while dragging, terms on release
  let drag = null;
  const yOf = e => { const r = box.querySelector('svg').getBoundingClientRect(); return e.clientY - r.top; };
  box.addEventListener('mousedown', e => {
    const zone = e.target.closest('.brush-zone');
    if (!zone) return;
    e.preventDefault();
    const a = PARALLEL_AXES.find(x => x.d === zone.dataset.dim);
    if (!a) return;
    const live = document.createElementNS('http://www.w3.org/2000/svg', 'rect');
    live.setAttribute('class', 'brush live'); live.setAttribute('x', a.x - 6); live.setAttribute('width', 12);
    box.querySelector('svg').appendChild(live);
    drag = { a, y0: yOf(e), live };
    live.setAttribute('y', drag.y0); live.setAttribute('height', 1);
  });
  window.addEventListener('mousemove', e => {
    if (!drag) return;
    const y1 = yOf(e);
    drag.live.setAttribute('y', Math.min(drag.y0, y1)); drag.live.setAttribute('height', Math.abs(y1 - drag.y0));
  });
  window.addEventListener('mouseup', e => {
    if (!drag) return;
    const { a, y0 } = drag, y1 = yOf(e);
    drag = null;
    setColumnTerms(a.d, Math.abs(y1 - y0) < 3 ? [] : brushTerms(a, y0, y1));
  });
}

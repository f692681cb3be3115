// What the charts share: SVG axes and ticks, colours and their legends, canvas layers.
function svg(w, h, inner) { return '<svg width="' + w + '" height="' + h + '" viewBox="0 0 ' + w + ' ' + h + '">' + inner + '</svg>'; }
function scale(vals, lo, hi, log) {
  const f = log ? v => Math.log10(v) : v => v, xs = vals.filter(v => !log || v > 0).map(f).filter(isFinite);
  let a = Math.min(...xs), b = Math.max(...xs); if (!(b > a)) { a -= 1; b += 1; }
  const pad = (b - a) * 0.04; a -= pad; b += pad;
  const s = v => lo + (f(v) - a) / (b - a) * (hi - lo);
  s.domain = log ? [10 ** a, 10 ** b] : [a, b]; s.log = !!log;
  s.invert = px => { const u = a + (px - lo) / (hi - lo) * (b - a); return log ? 10 ** u : u; };
  return s;
}
function tickValues(s) {
  // about five round values inside the axis: 1-2-5 steps, or decades on a log axis
  const [a, b] = s.domain;
  if (s.log) {
    // decades; where they are fewer than four (weights 0.43 to 43 showed only 1 and 10), 2 and 5
    // of each decade too
    const decades = [], out = [];
    for (let e = Math.floor(Math.log10(a)); e <= Math.ceil(Math.log10(b)); e++) decades.push(e);
    const steps = decades.length - 2 < 4 ? [1, 2, 5] : [1];
    for (const e of decades) for (const m of steps) {
      const v = Number((m * 10 ** e).toPrecision(12));
      if (v >= a && v <= b) out.push(v);
    }
    return out.length >= 2 ? out : [a, b];
  }
  const raw = (b - a) / 5, mag = 10 ** Math.floor(Math.log10(raw)), step = [1, 2, 5, 10].map(m => m * mag).find(v => v >= raw);
  const out = [];
  for (let v = Math.ceil(a / step) * step; v <= b + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return out;
}
function axes(sx, sy, W, H) {
  // ticks with values on both axes (the x axis only when numeric)
  const t = (x, y, v, anchor) => '<text class="tick" x="' + x.toFixed(1) + '" y="' + y.toFixed(1) + '" font-size="10" fill="#444" text-anchor="' + anchor + '">' + esc(fmt(v)) + '</text>';
  const grid = (x1, y1, x2, y2) => '<line x1="' + x1.toFixed(1) + '" y1="' + y1.toFixed(1) + '" x2="' + x2.toFixed(1) + '" y2="' + y2.toFixed(1) + '" stroke="#eee"/>';
  let out = '';
  for (const v of tickValues(sy)) out += grid(44, sy(v), W - 10, sy(v)) + t(42, sy(v) + 3, v, 'end');
  if (sx) for (const v of tickValues(sx)) out += grid(sx(v), 10, sx(v), H - 30) + t(sx(v), H - 18, v, 'middle');
  return out;
}
const PALETTE = ['#3465a4', '#cc0000', '#4e9a06', '#f57900', '#75507b', '#c4a000', '#06989a', '#555753', '#a40000', '#204a87'];
// the i-th of many distinct colours: the palette, then hues spread by the golden angle
function distinct(i) { return i < PALETTE.length ? PALETTE[i] : 'hsl(' + Math.round((i * 137.508) % 360) + ',65%,42%)'; }
function colourer(rows) {
  // colour by a parameter: categories each their own colour (the palette, then hues spread by the
  // golden angle), numbers of many values along a blue-to-orange ramp (by rank); ``.legend`` says
  // which colour is which ('' for one colour)
  const by = $('colour').value;
  if (!by) { const one = () => PALETTE[0]; one.legend = ''; return one; }
  const values = [...new Set(rows.map(r => r[by]).filter(v => v !== null && v !== undefined))];
  const swatch = (c, text) => '<span class="entry"><span class="swatch" style="background:' + c + '"></span>' + esc(text) + '</span>';
  const head = '<b>colour: ' + esc(LABEL[by] || by) + '</b> ';
  let f;
  if (values.every(v => typeof v === 'number') && values.length > PALETTE.length) {
    values.sort((a, b) => a - b);
    const rank = new Map(values.map((v, i) => [v, i / Math.max(1, values.length - 1)]));
    const hue = t => 'hsl(' + Math.round(220 - 190 * t) + ',70%,45%)';
    f = r => rank.has(r[by]) ? hue(rank.get(r[by])) : '#999';
    f.legend = '<div class="legend" data-entries="2">' + head + swatch(hue(0), fmt(values[0])) + ' \u2192 ' +
      swatch(hue(1), fmt(values[values.length - 1])) + ' <span class="muted">(' + values.length + ' values, by rank)</span></div>';
    return f;
  }
  values.sort((a, b) => (a > b ? 1 : a < b ? -1 : 0));
  const colourOf = distinct;
  const index = new Map(values.map((v, i) => [v, i]));
  f = r => index.has(r[by]) ? colourOf(index.get(r[by])) : '#999';
  const shown = values.slice(0, 40);
  f.legend = '<div class="legend" data-entries="' + shown.length + '">' + head + shown.map((v, i) => swatch(colourOf(i), fmt(v))).join(' ') +
    (values.length > shown.length ? ' <span class="muted">and ' + (values.length - shown.length) + ' more</span>' : '') + '</div>';
  return f;
}
function useLogX(pts, x) {
  // positive numbers spanning two decades or more (content weights 0.1..43): a log axis
  const mode = $('logx').value;
  if (mode !== 'auto') return mode === 'log' && pts.every(p => p[x] > 0);
  const xs = pts.map(p => p[x]);
  return xs.every(v => typeof v === 'number' && v > 0) && Math.max(...xs) / Math.min(...xs) >= 100;
}
let scatterKey = null;  // what the scatter last drew: a page change does not redraw it
// Above this many marks a chart draws them on a canvas under its SVG axes: 20,000 SVG circles took
// over a second a redraw and read as a wall; a canvas of them takes milliseconds.
const CANVAS_ABOVE = 1500;
const REMEMBERED = {};
function remembered(slot, parts, make) {
  // what make() returned when last called with these parts (each compared with ===: the rows array
  // of the last render, the chosen columns): a new colour leaves a chart's geometry as it was, and
  // working it out again was half a 20,000-row redraw
  const kept = REMEMBERED[slot];
  if (kept && kept.parts.length === parts.length && kept.parts.every((p, i) => p === parts[i])) return kept.value;
  const value = make();
  REMEMBERED[slot] = { parts, value };
  return value;
}
function byColour(items, colour) {
  // the items' indices by their colour (a Map in the order the colours first appear): a canvas
  // sets each colour once
  const out = new Map();
  items.forEach((item, i) => {
    const c = colour(item);
    if (!out.has(c)) out.set(c, []);
    out.get(c).push(i);
  });
  return out;
}
function plotWithCanvas(box, W, H, svgText, after) {
  // the chart as a canvas (marks) under an SVG (axes, labels, brush zones); returns the canvas
  box.innerHTML = '<div class="plot" style="width:' + W + 'px;height:' + H + 'px"><canvas width="' + W + '" height="' + H +
    '"></canvas>' + svgText + '</div>' + (after || '');
  return box.querySelector('canvas');
}

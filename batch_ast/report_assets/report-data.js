// The page's data (report.data.js, expanded once), the loss curves loaded on demand, the view's
// state, and formatting.
const D = window.BATCH_AST, PAGE = 50;
// The data file is compact (report.py): rows as arrays under D.keys, inputs by index, a row's
// files as bits, traces as (first, step, last) iterations and their losses. Expanded here once.
function traceOf(t) {
  let xs = t.i;
  if (!xs) { xs = []; for (let x = t.a; x < t.l; x += t.s) xs.push(x); xs.push(t.l); }
  return xs.map((x, k) => [x, t.t[k]]);
}
D.rows = D.rows.map(values => Object.fromEntries(D.keys.map((key, i) => [key, values[i] ?? null])));
for (const r of D.rows) {
  r.content_url = D.inputs[r.ci] ?? null; r.style_url = D.inputs[r.si] ?? null;
  for (const [key, [bit, name]] of Object.entries(D.files))
    r[key] = r.f & bit ? D.root_prefix + 'runs/' + encodeURIComponent(r.id) + '/' + encodeURIComponent(name) : null;
}
D.rows.forEach((r, i) => { r._n = i + 1; });  // the row's number in the table (indexOf per row was quadratic)
// The loss curves are a file of their own (report.py), loaded when a chart first asks for them:
// the page's first paint does not wait for most of a large study's data.
D.traces = null;
const BY_ID = new Map(D.rows.map(r => [r.id, r]));
function hasTrace(id) { return D.traces ? !!D.traces[id] : (BY_ID.get(id) || {}).status === 'ok'; }
let tracesWaiting = null;
function loadTraces(then) {
  // true when the curves are here; else starts loading them (once) and calls then() when they are
  if (D.traces) return true;
  if (!tracesWaiting) {
    tracesWaiting = [];
    const script = document.createElement('script');
    script.src = D.traces_src;
    script.onload = () => {
      const raw = window.BATCH_AST_TRACES || {};
      D.traces = {};
      for (const id of Object.keys(raw)) D.traces[id] = traceOf(raw[id]);
      window.BATCH_AST_TRACES = null;
      const waiting = tracesWaiting; tracesWaiting = null; waiting.forEach(f => f());
    };
    script.onerror = () => {
      D.traces = {}; tracesWaiting = null;
      $('curves').innerHTML = '<p class="problems">the loss curves (' + esc(D.traces_src) + ') could not be loaded</p>';
    };
    document.head.appendChild(script);
  }
  tracesWaiting.push(then);
  return false;
}
const SEEDS_VARY = D.params.includes('seed');
const S = { filter: '', sortKey: null, asc: true, page: 0, group: true, open: new Set(), ab: {}, selected: new Set(),
  agg: SEEDS_VARY, aggBy: null, hidden: new Set(), spread: 'sd', curveGroups: null, renders: 0, axes: null,
  scrollY: 0, charted: null };  // charted: the rows (and groups) the charts last drew
const FILTER_DEBOUNCE_MS = 250;  // typing redraws once it pauses, not at every keystroke
function shownColumns() {
  // the name first, then the sorted column (pinned beside the name, however far right it sits), then the rest
  const cols = D.columns.filter(c => c === 'label' || !S.hidden.has(c));
  const k = S.sortKey;
  return k && k !== 'label' && cols.includes(k) ? ['label', k].concat(cols.filter(c => c !== 'label' && c !== k)) : cols;
}
const media = { tried: 0, broken: [] };
const $ = id => document.getElementById(id);
const esc = s => String(s).replace(/[&<>"']/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]));
// Headers in words, with units; the filter names a column by its key (each header's tooltip)
const LABEL = { label: 'name', status: 'status', content_name: 'content', style_name: 'style', iterations_run: 'iterations run',
  final_total: 'total loss', final_content: 'content loss', final_style: 'style loss', spectral_convergence: 'spectral conv.',
  content_distance: 'content dist.', style_distance: 'style dist.', style_distance_of_content: 'style dist. of content',
  content_distance_heldout: 'content dist. (held-out)', style_distance_heldout: 'style dist. (held-out)',
  style_distance_heldout_of_content: 'style dist. of content (held-out)', lsd_to_content_db: 'LSD to content (dB)',
  onset_corr_content: 'onset corr. content', onset_corr_style: 'onset corr. style', content_weight: 'content weight',
  style_weight: 'style weight', n_filters: 'filters', lr: 'learning rate', max_seconds: 'max seconds (s)',
  time_total_s: 'wall time (s)', cpu_s: 'CPU time (s)' };
const GROUPED = new Intl.NumberFormat('en-US', { maximumFractionDigits: 12 });
function fmt(v) {
  // one format for every number: 4 significant digits, thousands grouped (10,780 beside 4,196, not
  // 1.078e+4); only magnitudes below 0.001 as exponents
  if (v === null || v === undefined || v === '') return '\u2014';
  if (typeof v === 'number') {
    if (Number.isInteger(v) && Math.abs(v) < 1e15) return GROUPED.format(v);
    if (v !== 0 && Math.abs(v) < 1e-3) return v.toExponential(2);
    return GROUPED.format(Number(v.toPrecision(4)));
  }
  return String(v);
}
function title(r) { return r.name || r.label || r.id; }

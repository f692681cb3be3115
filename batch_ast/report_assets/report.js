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
  agg: SEEDS_VARY, aggBy: null, hidden: new Set(), spread: 'sd', curveGroups: null, renders: 0 };
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
// filter: space-separated terms; col=value (col=a,b: either), col!=value, col<number, col>number,
// col<=number, col>=number (spaces around the operator allowed), or text found in name, id,
// status, content, style, preset or error. A term naming no column is searched as text, and said.
const TEXT_KEYS = ['label', 'name', 'id', 'status', 'content_name', 'style_name', 'preset', 'error'];
const KNOWN = new Set(D.columns.concat(D.params, D.metrics, D.rows.slice(0, 200).flatMap(r => Object.keys(r))));
const STARTS_WITH_OPERATOR = /^(!=|<=|>=|=|<|>)/;
const ENDS_WITH_OPERATOR = /(!=|<=|>=|=|<|>)$/;
// The filter's words, with "col = value" written with spaces around its operator joined into one.
// One pass over the words: a regex with \s* on both sides of the operator backtracked
// quadratically over a long run of spaces (160,000 spaces in a deep link took 23 s a keystroke).
function filterTokens(text) {
  const out = [];
  for (const word of text.split(/\s+/)) {
    if (!word) continue;
    if (out.length && (STARTS_WITH_OPERATOR.test(word) || ENDS_WITH_OPERATOR.test(out[out.length - 1])))
      out[out.length - 1] += word;
    else out.push(word);
  }
  return out;
}
function parseTerms(text) {
  const problems = [];
  const terms = filterTokens(text).map(t => {
    const m = t.match(/^([A-Za-z_][\w]*)(!=|<=|>=|=|<|>)(.*)$/);
    if (!m) return { text: t.toLowerCase() };
    if (!KNOWN.has(m[1])) {
      problems.push('"' + m[1] + '" is not a column: "' + t + '" searched as text');
      return { text: t.toLowerCase() };
    }
    if (m[3] === '') { problems.push('"' + t + '": a value is missing after ' + m[2]); return null; }
    const vals = m[2] === '=' || m[2] === '!=' ? m[3].split(',') : [m[3]];
    if (!['=', '!='].includes(m[2]) && isNaN(parseFloat(m[3]))) {
      problems.push('"' + t + '": ' + m[2] + ' compares numbers, and "' + m[3] + '" is not one'); return null;
    }
    return { col: m[1], op: m[2], vals: vals, n: vals.map(parseFloat) };
  }).filter(Boolean);
  return { terms, problems };
}
function equal(v, s, n) { return String(v) === s || (typeof v === 'number' && v === n); }
function matches(r, terms) {
  return terms.every(t => {
    if (t.text !== undefined)
      return TEXT_KEYS.some(k => r[k] && String(r[k]).toLowerCase().includes(t.text));
    const v = r[t.col];
    if (t.op === '=') return t.vals.some((s, i) => equal(v, s, t.n[i]));
    if (t.op === '!=') return !t.vals.some((s, i) => equal(v, s, t.n[i]));
    const n = t.n[0];
    if (typeof v !== 'number') return false;
    return t.op === '<' ? v < n : t.op === '>' ? v > n : t.op === '<=' ? v <= n : v >= n;
  });
}
function bySortKey(a, b) {
  // the chosen column's order (S.asc), missing values last; 0 when no column is chosen
  if (!S.sortKey) return 0;
  const x = a[S.sortKey], y = b[S.sortKey];
  if (x === y) return 0; if (x === null || x === undefined) return 1; if (y === null || y === undefined) return -1;
  return (x > y ? 1 : -1) * (S.asc ? 1 : -1);
}
function visibleRows() {
  const { terms, problems } = parseTerms(S.filter);
  const box = $('filter-problems');
  box.textContent = problems.join('; '); box.dataset.problems = problems.length;
  let rows = D.rows.filter(r => matches(r, terms) && (!S.only || S.only.ids.has(r.id)));
  rows = rows.map((r, i) => [r, i]).sort((a, b) => {
    if (S.group) { const g = String(a[0].content_name).localeCompare(String(b[0].content_name)); if (g) return g; }
    return bySortKey(a[0], b[0]) || a[1] - b[1];
  }).map(p => p[0]);
  return rows;
}
function track(el) {
  media.tried += 1;
  el.addEventListener('error', () => { media.broken.push(el.getAttribute('src')); showMedia(); }, { once: true });
  showMedia();
  return el;
}
function showMedia() {
  const box = $('media-check');
  box.dataset.tried = media.tried; box.dataset.broken = media.broken.length;
  box.className = media.broken.length ? 'bad' : 'good';
  box.textContent = media.tried === 0 ? 'no media loaded yet (players and figures load when a row is opened)'
    : media.broken.length ? media.broken.length + ' of ' + media.tried + ' media files tried failed to load: ' + media.broken.join(', ')
    : 'all ' + media.tried + ' media files tried load';
}
// Cross-row A/B: a pinned reference row's output is one more source of every opened row's player.
function reference() { return S.ref ? D.rows.find(x => x.id === S.ref && x.output_url) : null; }
function sourceOf(r, which) {
  // [url, level in dBFS] of a row's source; 'reference' is the pinned row's output
  if (which === 'reference') { const ref = reference(); return ref ? [ref.output_url, ref.output_rms_dbfs] : [null, null]; }
  return [r[which + '_url'], r[which + '_rms_dbfs']];
}
function gainFor(r, which) {
  // loudness matching: every source plays at the level of the quietest (volume cannot exceed 1)
  const levels = ['content', 'style', 'output', 'reference'].map(k => sourceOf(r, k)[1]).filter(v => typeof v === 'number');
  const own = sourceOf(r, which)[1];
  if (typeof own !== 'number' || !levels.length) return 1;
  return Math.min(1, Math.pow(10, (Math.min(...levels) - own) / 20));
}
function pinReference(id) {
  S.ref = S.ref === id ? null : id;
  render(); writeHash();
}
function switchAB(id, which) {
  const r = D.rows.find(x => x.id === id), box = document.querySelector('[data-ab="' + CSS.escape(id) + '"]');
  const url = r ? sourceOf(r, which)[0] : null;
  if (!r || !box || !url) return;
  const audio = box.querySelector('audio'), wasPlaying = !audio.paused, at = audio.currentTime;
  S.ab[id] = which;
  if (audio.dataset.which !== which || audio.getAttribute('src') !== url) {
    // a chosen source loads its header (to seek to the same position, and to show a broken file)
    audio.preload = 'metadata'; audio.src = url; audio.dataset.which = which; track(audio);
    audio.addEventListener('loadedmetadata', () => { audio.currentTime = Math.min(at, audio.duration || at); if (wasPlaying) audio.play(); }, { once: true });
  }
  audio.volume = gainFor(r, which);
  box.querySelectorAll('button').forEach(b => b.classList.toggle('on', b.dataset.which === which));
  box.dataset.which = which; writeHash();
}
function usage(r) {  // what the row consumed (null for rows written before batch-ast 0.5)
  if (r.cpu_s === null || r.cpu_s === undefined) return [];
  const gib = b => fmt(b / 2 ** 30) + ' GiB';
  let text = 'CPU ' + fmt(r.cpu_s) + ' s, peak memory ' + gib(r.peak_rss_bytes);
  if (r.device_peak_bytes !== null && r.device_peak_bytes !== undefined) text += ', on the device ' + gib(r.device_peak_bytes);
  if (r.gpu_util_mean !== null && r.gpu_util_mean !== undefined) text += ', GPU busy ' + fmt(r.gpu_util_mean) + ' %';
  return [text];
}
function details(r) {
  const parts = ['<td colspan="' + (shownColumns().length + 2) + '"><div class="details-box">'];
  parts.push('<p><b>' + esc(title(r)) + '</b> <span class="muted">[' + esc(r.id) + '] manifest row ' + fmt(r.row) +
             ' of submission ' + esc(r.submission_id || '\u2014') + '</span></p>');
  const facts = D.params.map(p => p + ' ' + fmt(r[p])).concat(['stop: ' + fmt(r.stop_reason), 'evaluations ' + fmt(r.evaluations),
    'wall ' + fmt(r.time_total_s) + ' s on ' + fmt(r.device_used)]).concat(usage(r));
  parts.push('<p>' + esc(facts.join('; ')) + '</p>');
  const results = D.metrics.filter(m => r[m] !== null && r[m] !== undefined);
  if (results.length) parts.push('<p class="metrics">' + results.map(m => esc(LABEL[m] || m) + ' <b>' + esc(fmt(r[m])) + '</b>').join(' \u00b7 ') + '</p>');
  if (r.error) parts.push('<pre class="error">' + esc(r.error) + '</pre>');
  if (r.figure_error) parts.push('<p>figures missing: ' + esc(r.figure_error) + ' (batch-ast collect redraws them)</p>');
  const ref = reference(), sources = ['content', 'style', 'output'].filter(k => r[k + '_url']);
  if (ref && ref.id !== r.id) sources.push('reference');
  if (sources.length) {
    const label = k => k === 'reference' ? 'reference: ' + esc(title(ref)) : k;
    parts.push('<div class="ab" data-ab="' + esc(r.id) + '">' + sources.map(k =>
      '<button data-which="' + k + '" onclick="switchAB(' + esc(JSON.stringify(r.id)) + ', \'' + k + '\')">' + label(k) + '</button>').join('') +
      ' <audio controls preload="none"></audio> <span class="muted">A/B: switching keeps the playback position; levels matched to the quietest</span></div>');
  }
  if (r.output_url) parts.push('<p><button class="pin-ref" onclick="pinReference(' + esc(JSON.stringify(r.id)) + ')">' +
    (S.ref === r.id ? 'unpin as the reference' : 'pin as the reference') + '</button> <span class="muted">' +
    (S.ref === r.id ? 'every opened row can play this output at its own position' :
     'then every opened row can switch to this output at the same position, level-matched') + '</span></p>');
  parts.push('<div class="figures">' + [['spectrogram_url', 'spectrograms'], ['loss_url', 'loss curve']].filter(([k]) => r[k])
    .map(([k, alt]) => '<img loading="lazy" alt="' + alt + '" data-src="' + esc(r[k]) + '">').join('') + '</div>');
  return parts.join('') + '</div></td>';
}
// Aggregation: rows that share the chosen columns become one row with n and the mean of each metric
// over their ok rows, with its spread (std, SEM or 95 % CI: S.spread). By default, where seeds vary,
// the inputs and every varying hyperparameter but the seed (the rows of a group differ by seed
// alone; the page opens so); where they do not, the scatter's x (the page opens row by row).
function defaultAggKeys() {
  if (SEEDS_VARY) return ['content_name', 'style_name'].concat(D.params.filter(p => p !== 'seed'));
  const x = $('sx').value;
  return [D.params.includes(x) ? x : D.params[0] || 'content_name'];
}
function aggKeys() { return S.aggBy || defaultAggKeys(); }
function aggNote() {
  if (S.aggBy) return 'grouped by the columns chosen: ' + S.aggBy.join(', ');
  if (SEEDS_VARY) return 'aggregated over seeds: a group is the rows that differ by seed alone';
  return 'seeds do not vary in this study: grouped by the scatter\'s x, ' + aggKeys()[0] + ', over every other setting';
}
// Student's t at 97.5 % for 1..30 degrees of freedom (tables); beyond, 1.96 + 2.5/df is within 0.1 %.
const T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
  2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042];
function t975(df) { return df <= 30 ? T975[df - 1] : 1.96 + 2.5 / df; }
const SPREADS = { sd: 'std', sem: 'SEM', ci: '95 % CI' };
function spreadOf(sd, n) {
  // the chosen spread of a mean of n values with sample std sd (null where n < 2)
  if (sd === null || sd === undefined || !(n > 1)) return null;
  return S.spread === 'sem' ? sd / Math.sqrt(n) : S.spread === 'ci' ? t975(n - 1) * sd / Math.sqrt(n) : sd;
}
function aggregate(rows) {
  const keys = aggKeys(), groups = new Map();
  for (const r of rows) {
    const k = JSON.stringify(keys.map(c => r[c] === undefined ? null : r[c]));
    if (!groups.has(k)) groups.set(k, { key: k, rows: [], values: Object.fromEntries(keys.map(c => [c, r[c]])) });
    groups.get(k).rows.push(r);
  }
  return [...groups.values()].map(g => {
    const ok = g.rows.filter(r => r.status === 'ok'), out = { ...g.values, key: g.key, n: ok.length,
      failed: g.rows.length - ok.length, ids: g.rows.map(r => r.id) };
    for (const m of D.metrics) {
      const xs = ok.map(r => r[m]).filter(v => typeof v === 'number');
      const mean = xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null;
      out[m] = mean;
      out[m + '_n'] = xs.length;
      out[m + '_sd'] = xs.length > 1 ? Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (xs.length - 1)) : null;
    }
    return out;
  });
}
function sortedGroups(rows) {
  const groups = aggregate(rows), k = S.sortKey;
  if (k) groups.sort(bySortKey);
  return groups;
}
function renderAggregated(rows) {
  const keys = aggKeys(), groups = sortedGroups(rows), pages = Math.max(1, Math.ceil(groups.length / PAGE));
  S.page = Math.min(S.page, pages - 1);
  const cols = keys.concat(['n'], D.metrics.filter(m => !S.hidden.has(m)));
  const drawn = new Set(curveGroupKeys(groups.slice(S.page * PAGE, (S.page + 1) * PAGE)));
  const head = '<tr><th title="draw this group\'s mean loss curve">curve</th>' + cols.map(c => '<th data-k="' + esc(c) + '" class="' + (S.sortKey === c ? (S.asc ? 'sorted-asc' : 'sorted-desc') : '') +
    (c === keys[0] ? ' pin' : '') + '">' + esc(c === 'n' ? 'n (ok)' : (LABEL[c] || c) + (D.metrics.includes(c) ? ' (mean ± ' + SPREADS[S.spread] + ')' : '')) + '</th>').join('') + '</tr>';
  const body = groups.slice(S.page * PAGE, (S.page + 1) * PAGE).map(g => '<tr class="agg" data-key="' + esc(g.key) + '"><td><input type="checkbox" class="curve-pick"' +
    (drawn.has(g.key) ? ' checked' : '') + '></td>' +
    cols.map(c => {
      const spread = D.metrics.includes(c) ? spreadOf(g[c + '_sd'], g[c + '_n']) : null;
      // (a spread below float rounding of the mean is none: equal values show ± 0)
      const shown = spread !== null && spread <= 1e-9 * Math.abs(g[c]) ? 0 : spread;
      if (D.metrics.includes(c)) return '<td>' + esc(fmt(g[c])) + (shown !== null && g[c] !== null ? ' <span class="muted">± ' + esc(fmt(shown)) + '</span>' : '') + '</td>';
      if (c === 'n') return '<td>' + g.n + (g.failed ? ' <span class="muted">(+' + g.failed + ' not ok)</span>' : '') + '</td>';
      return '<td class="text' + (c === keys[0] ? ' pin' : '') + '">' + esc(fmt(g[c])) + '</td>';
    }).join('') + '</tr>');
  $('rows').innerHTML = '<thead>' + head + '</thead><tbody>' + body.join('') + '</tbody>';
  $('count').textContent = groups.length + ' groups of ' + rows.length + ' rows (by ' + keys.join(', ') + '); page ' + (S.page + 1) + ' of ' + pages;
  $('aggnote').textContent = aggNote();
  $('count').dataset.matching = rows.length; $('count').dataset.groups = groups.length;
  S.pageGroups = groups.slice(S.page * PAGE, (S.page + 1) * PAGE);
  return groups;
}
function showGroup(key) {
  const g = aggregate(visibleRows()).find(x => x.key === key);
  if (!g) return;
  S.only = { label: aggKeys().map(c => (LABEL[c] || c) + ' ' + fmt(g[c])).join(', '), ids: new Set(g.ids) };
  S.agg = false; $('agg').checked = false; S.page = 0; render(); writeHash();
}
function clearGroup() { S.only = null; S.page = 0; render(); writeHash(); }
function render() {
  const only = $('only');
  const ref = reference();
  only.innerHTML = (S.only ? '<div>only the rows of one group: ' + esc(S.only.label) + ' <button onclick="clearGroup()">show all</button></div>' : '') +
    (ref ? '<div id="reference" data-id="' + esc(ref.id) + '">reference for A/B: ' + esc(title(ref)) +
      ' <button onclick="pinReference(' + esc(JSON.stringify(ref.id)) + ')">unpin</button></div>' : '');
  const rows = visibleRows();
  S.renders += 1; document.body.dataset.renders = S.renders;
  if (!S.aggBy) $('aggby').value = aggKeys().join(',');
  if (S.agg) { drawScatter(rows, renderAggregated(rows)); drawCurves(); return; }
  $('aggnote').textContent = '';
  const pages = Math.max(1, Math.ceil(rows.length / PAGE));
  S.page = Math.min(S.page, pages - 1);
  const shown = rows.slice(S.page * PAGE, (S.page + 1) * PAGE);
  const head = '<tr><th title="select for the loss-curve overlay">\u2713</th><th data-k="#">#</th>' + shownColumns().map(c =>
    '<th data-k="' + c + '" title="' + esc(c) + '" class="' + (S.sortKey === c ? (S.asc ? 'sorted-asc' : 'sorted-desc') : '') + (c === 'label' ? ' pin' : '') + '">' +
    esc(LABEL[c] || c) + '</th>').join('') + '</tr>';
  const body = []; let group = null;
  const counts = {}; rows.forEach(r => { counts[r.content_name] = (counts[r.content_name] || 0) + 1; });
  for (const r of shown) {
    if (S.group && r.content_name !== group) {
      group = r.content_name;
      body.push('<tr class="group"><td colspan="' + (shownColumns().length + 2) + '">content: ' + esc(group) + ' (' + counts[group] +
        ' rows) <button onclick="playContent(this, ' + esc(JSON.stringify(r.id)) + ')">play content</button></td></tr>');
    }
    const cells = shownColumns().map(c => '<td class="' + (typeof r[c] === 'number' ? '' : 'text') + (c === 'label' ? ' pin' : '') + '">' + esc(fmt(r[c])) + '</td>').join('');
    body.push('<tr class="row ' + esc(r.status) + '" data-id="' + esc(r.id) + '"><td><input type="checkbox" ' +
      (S.selected.has(r.id) ? 'checked' : '') + ' onclick="event.stopPropagation(); toggleSelect(this, ' + esc(JSON.stringify(r.id)) +
      ')"></td><td>' + r._n + '</td>' + cells + '</tr>');
    if (S.open.has(r.id)) body.push('<tr class="details" data-for="' + esc(r.id) + '">' + details(r) + '</tr>');
  }
  $('rows').innerHTML = '<thead>' + head + '</thead><tbody>' + body.join('') + '</tbody>';
  $('count').textContent = rows.length + ' of ' + D.rows.length + ' rows; page ' + (S.page + 1) + ' of ' + pages;
  $('count').dataset.matching = rows.length;
  document.querySelectorAll('#rows img[data-src]').forEach(img => { img.src = img.dataset.src; track(img); });
  for (const id of S.open) if (S.ab[id]) switchAB(id, S.ab[id]);
  drawScatter(rows, null); drawCurves();
}
function playContent(button, id) {
  const r = D.rows.find(x => x.id === id);
  let a = button.nextElementSibling;
  if (!a || a.tagName !== 'AUDIO') { a = document.createElement('audio'); a.controls = true; a.preload = 'none';
    a.src = r.content_url; track(a); button.after(a); }
  a.play();
}
function toggleSelect(box, id) { if (box.checked) S.selected.add(id); else S.selected.delete(id); drawCurves(); writeHash(); }
function defaultSource(id) {
  const r = D.rows.find(x => x.id === id);
  return r ? ['output', 'content', 'style'].find(k => r[k + '_url']) : undefined;
}
function openRow(id, ab) {
  const i = visibleRows().findIndex(r => r.id === id);
  if (i < 0) return;
  S.page = Math.floor(i / PAGE); S.open.add(id); S.ab[id] = ab || S.ab[id] || defaultSource(id);
  render(); writeHash();
  const tr = document.querySelector('tr.details[data-for="' + CSS.escape(id) + '"]'); if (tr) tr.scrollIntoView();
}
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
    const out = [];
    for (let e = Math.ceil(Math.log10(a)); e <= Math.floor(Math.log10(b)); e++) out.push(10 ** e);
    return out.length >= 2 ? out : [a, b];
  }
  const raw = (b - a) / 5, mag = 10 ** Math.floor(Math.log10(raw)), step = [1, 2, 5, 10].map(m => m * mag).find(v => v >= raw);
  const out = [];
  for (let v = Math.ceil(a / step) * step; v <= b + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return out;
}
function axes(sx, sy, W, H) {
  // ticks with values on both axes (the x axis only when numeric)
  const t = (x, y, v, anchor) => '<text class="tick" x="' + x.toFixed(1) + '" y="' + y.toFixed(1) + '" font-size="9" fill="#555" text-anchor="' + anchor + '">' + esc(fmt(v)) + '</text>';
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
function plotWithCanvas(box, W, H, svgText, after) {
  // the chart as a canvas (marks) under an SVG (axes, labels, brush zones); returns the canvas
  box.innerHTML = '<div class="plot" style="width:' + W + 'px;height:' + H + 'px"><canvas width="' + W + '" height="' + H +
    '"></canvas>' + svgText + '</div>' + (after || '');
  return box.querySelector('canvas');
}
function drawScatter(rows, groups) {
  // rows (ok ones), or with the table aggregated its groups: mean ± std as error bars
  const x = $('sx').value, y = $('sy').value, W = 480, H = 320;
  const key = JSON.stringify([S.filter, S.agg, S.aggBy, S.spread, S.only && [...S.only.ids], x, y, $('colour').value, $('logx').value, rows.length]);
  if (key === scatterKey) return;
  scatterKey = key;
  drawParallel(rows, groups);
  const has = p => p[x] !== null && p[x] !== undefined && typeof p[y] === 'number';
  const pts = groups ? groups.filter(has) : rows.filter(r => r.status === 'ok' && has(r));
  $('scatter').dataset.points = pts.length; $('scatter').dataset.bars = 0;
  if (!pts.length) { $('scatter').innerHTML = '<p class="muted">no ok rows with both values</p>'; return; }
  const numeric = pts.every(p => typeof p[x] === 'number'), logx = numeric && useLogX(pts, x);
  const cats = numeric ? [] : [...new Set(pts.map(p => String(p[x])))];
  // (a spread below float rounding of the mean is none: equal values are not drawn as a bar)
  const sd = p => { const v = groups ? spreadOf(p[y + '_sd'], p[y + '_n']) : null; return v !== null && v > 1e-9 * Math.abs(p[y]) ? v : 0; };
  const sx = numeric ? scale(pts.map(p => p[x]), 46, W - 12, logx) : v => 46 + (cats.indexOf(String(v)) + 0.5) / cats.length * (W - 58);
  const sy = scale(pts.flatMap(p => [p[y] - sd(p), p[y] + sd(p)]), H - 32, 10);
  const colour = colourer(pts);
  const labelsAndAxes = () => axes(numeric ? sx : null, sy, W, H) + (numeric ? '' : cats.map(c => '<text class="tick" x="' + sx(c).toFixed(1) + '" y="' + (H - 18) +
    '" font-size="10" text-anchor="middle">' + esc(c) + '</text>').join('')) + '<text x="' + (W / 2) + '" y="' + (H - 3) + '" font-size="11" text-anchor="middle">' +
    esc(x) + (logx ? ' (log)' : '') + '</text><text x="46" y="9" font-size="11">' + esc(y) + (groups ? ' (mean ± ' + SPREADS[S.spread] + ')' : '') + '</text>';
  $('scatter').dataset.logx = logx ? 1 : 0; $('scatter').dataset.canvas = 0;
  if (pts.length > CANVAS_ABOVE) {
    const canvas = plotWithCanvas($('scatter'), W, H, svg(W, H, labelsAndAxes()), colour.legend), ctx = canvas.getContext('2d');
    const at = pts.map(p => [sx(p[x]), sy(p[y])]);
    let bars = 0;
    ctx.globalAlpha = 0.5;
    pts.forEach((p, i) => {
      ctx.fillStyle = ctx.strokeStyle = colour(p);
      if (sd(p)) { bars++; ctx.beginPath(); ctx.moveTo(at[i][0], sy(p[y] - sd(p))); ctx.lineTo(at[i][0], sy(p[y] + sd(p))); ctx.stroke(); }
      ctx.beginPath(); ctx.arc(at[i][0], at[i][1], 2.5, 0, 2 * Math.PI); ctx.fill();
    });
    $('scatter').dataset.bars = bars; $('scatter').dataset.canvas = 1;
    canvas.title = 'click a dot to open its ' + (groups ? 'group' : 'row');
    canvas.onclick = e => {  // the dot nearest the click, within 6 px
      const r = canvas.getBoundingClientRect(), cx = e.clientX - r.left, cy = e.clientY - r.top;
      let best = -1, d2 = 36;
      at.forEach(([a, b], i) => { const d = (a - cx) ** 2 + (b - cy) ** 2; if (d < d2) { d2 = d; best = i; } });
      if (best >= 0) { if (groups) showGroup(pts[best].key); else openRow(pts[best].id); }
    };
    return;
  }
  let bars = 0;
  const marks = pts.map(p => {
    const cx = sx(p[x]).toFixed(1), what = groups ? aggKeys().map(c => (LABEL[c] || c) + ' ' + fmt(p[c])).join(', ') + ' (n ' + p.n + ')' : title(p);
    const click = groups ? 'showGroup(' + esc(JSON.stringify(p.key)) + ')' : 'openRow(' + esc(JSON.stringify(p.id)) + ')';
    const bar = sd(p) ? (bars++, '<line class="bar" x1="' + cx + '" x2="' + cx + '" y1="' + sy(p[y] - sd(p)).toFixed(1) + '" y2="' +
      sy(p[y] + sd(p)).toFixed(1) + '" stroke="' + colour(p) + '" stroke-opacity="0.6"/>') : '';
    return bar + '<circle cx="' + cx + '" cy="' + sy(p[y]).toFixed(1) + '" r="' + (groups ? 4 : 3) + '" fill="' + colour(p) + '" fill-opacity="0.65" ' +
      'onclick="' + click + '"><title>' + esc(what + ': ' + x + ' ' + fmt(p[x]) + ', ' + y + ' ' + fmt(p[y]) +
      (sd(p) ? ' ± ' + fmt(sd(p)) : '')) + '</title></circle>';
  }).join('');
  $('scatter').dataset.bars = bars;
  $('scatter').innerHTML = svg(W, H, labelsAndAxes() + marks) + colour.legend;
}
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
  // (in the aggregated view: the columns grouped by), the scatter's metric last
  const candidates = groups ? aggKeys() : ['content_name', 'style_name'].concat(D.params);
  const varies = d => d !== 'seed' && new Set(items.map(p => p[d])).size > 1;
  return candidates.filter((d, i, all) => all.indexOf(d) === i && varies(d)).concat([y]);
}
function drawParallel(rows, groups) {
  // parallel coordinates: one axis per varying column (a log axis where it spans two decades), the
  // scatter's metric last; a line per ok row (or group: its means), coloured as the charts are;
  // at most MAX_PARALLEL lines, a seeded random sample beyond. Dragging along an axis brushes it:
  // the range (or the categories) becomes filter terms, which filter the table and every chart and
  // land in the address; a click on an axis clears its brush.
  const y = $('sy').value, W = 600, H = 300, box = $('parallel');
  const pool = (groups || rows.filter(r => r.status === 'ok')).filter(p => typeof p[y] === 'number');
  const dims = parallelDims(pool, groups, y);
  const items = pool.filter(p => dims.every(d => p[d] !== null && p[d] !== undefined));
  box.dataset.lines = 0; box.dataset.dims = dims.join(',');
  if (dims.length < 2 || !items.length) { box.innerHTML = '<p class="muted">parallel coordinates need a column that varies among ok rows</p>'; return; }
  const shown = sampleOf(items, MAX_PARALLEL), colour = colourer(shown);
  const left = 80, gap = (W - left - 90) / (dims.length - 1);  // room at the sides for the axes' names
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
  PARALLEL_AXES = axis;
  const onCanvas = shown.length > CANVAS_ABOVE / 3;  // a polyline is several marks
  const lines = onCanvas ? '' : shown.map(p => '<polyline fill="none" stroke="' + colour(p) + '" stroke-opacity="' + (shown.length > 500 ? 0.2 : 0.45) + '" points="' +
    axis.map(a => a.x.toFixed(1) + ',' + a.s(p[a.d]).toFixed(1)).join(' ') + '"><title>' +
    esc((groups ? aggKeys().map(c => fmt(p[c])).join(', ') : title(p)) + ': ' + y + ' ' + fmt(p[y])) + '</title></polyline>').join('');
  const { terms } = parseTerms(S.filter);
  let brushes = 0;
  const axes = axis.map(a => {
    const t = (v, yy) => '<text class="tick" x="' + (a.x - 4).toFixed(1) + '" y="' + (yy + 3).toFixed(1) + '" font-size="9" fill="#333" text-anchor="end">' + esc(fmt(v)) + '</text>';
    const marks = a.cats ? a.cats.map(c => t(c.length > 14 ? c.slice(0, 13) + '\u2026' : c, a.s(c))).join('') : tickValues(a.s).map(v => t(v, a.s(v))).join('');
    const span = brushSpan(a, terms.filter(term => term.col === a.d));
    if (span) brushes++;
    return '<line x1="' + a.x.toFixed(1) + '" x2="' + a.x.toFixed(1) + '" y1="20" y2="' + (H - 30) + '" stroke="#888"/>' + marks +
      (span ? '<rect class="brush" x="' + (a.x - 6).toFixed(1) + '" width="12" y="' + span[0].toFixed(1) + '" height="' + Math.max(2, span[1] - span[0]).toFixed(1) + '"/>' : '') +
      '<rect class="brush-zone" data-dim="' + esc(a.d) + '" x="' + (a.x - 9).toFixed(1) + '" width="18" y="16" height="' + (H - 42) + '"><title>drag to brush ' + esc(a.d) + '; click to clear</title></rect>' +
      '<text x="' + a.x.toFixed(1) + '" y="' + (H - 12) + '" font-size="10" text-anchor="middle">' + esc(LABEL[a.d] || a.d) + (a.log ? ' (log)' : '') + '</text>';
  }).join('');
  box.dataset.lines = shown.length; box.dataset.brushes = brushes; box.dataset.canvas = onCanvas ? 1 : 0;
  const note = (items.length > shown.length ? '<p class="muted" id="parallel-sample">a random sample of ' + shown.length + ' of ' + items.length +
      ' lines (seed ' + SAMPLE_SEED + '); brushing filters every row</p>' : '') + colour.legend;
  if (!onCanvas) { box.innerHTML = svg(W, H, lines + axes) + note; return; }
  const ctx = plotWithCanvas(box, W, H, svg(W, H, axes), note).getContext('2d');
  ctx.globalAlpha = shown.length > 500 ? 0.2 : 0.45;
  for (const p of shown) {
    ctx.strokeStyle = colour(p); ctx.beginPath();
    axis.forEach((a, i) => { const yy = a.s(p[a.d]); if (i) ctx.lineTo(a.x, yy); else ctx.moveTo(a.x, yy); });
    ctx.stroke();
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
let curvesPlot = null;
const MAX_GROUP_CURVES = 10;
function alpha(colour, a) {
  // the same colour, translucent (for a band): hex or hsl()
  return colour.startsWith('hsl(') ? colour.replace('hsl(', 'hsla(').replace(')', ',' + a + ')')
    : colour + Math.round(a * 255).toString(16).padStart(2, '0');
}
function logAt(trace, x) {
  // log10 of a trace's loss at iteration x, linear between its points; null outside it
  if (!trace.length || x < trace[0][0] || x > trace[trace.length - 1][0]) return null;
  let k = 1;
  while (k < trace.length && trace[k][0] < x) k++;
  if (k >= trace.length) return Math.log10(trace[trace.length - 1][1]);
  const [x0, y0] = trace[k - 1], [x1, y1] = trace[k], l0 = Math.log10(y0), l1 = Math.log10(y1);
  return x1 === x0 ? l1 : l0 + (l1 - l0) * (x - x0) / (x1 - x0);
}
function groupCurves(groups) {
  // each group's mean curve in log10 of the loss (a geometric mean) with its spread (S.spread) as a
  // band, on one grid of iterations. A point is the mean over the rows that reached it (n, shown in
  // the legend); a curve stops where fewer than half its rows remain: rows stop early, and a mean
  // over the few still running jumped at the end and read as divergence.
  const traces = groups.map(g => g.ids.map(id => (D.traces[id] || []).filter(p => p[1] > 0)).filter(t => t.length));
  const last = Math.max(0, ...traces.flat().map(t => t[t.length - 1][0]));
  const xs = [...new Set(Array.from({ length: 80 }, (_, k) => Math.round(k * last / 79)))];
  return { xs, curves: traces.map(members => {
    const mean = [], lo = [], hi = [], n = [];
    let stop = null;
    for (const x of xs) {
      const ls = members.map(t => logAt(t, x)).filter(v => v !== null);
      if (!ls.length || ls.length * 2 < members.length) {
        if (stop === null && x > 0 && ls.length) stop = x;
        mean.push(null); lo.push(null); hi.push(null); n.push(ls.length); continue;
      }
      const m = ls.reduce((a, b) => a + b, 0) / ls.length;
      const sd = ls.length > 1 ? Math.sqrt(ls.reduce((a, b) => a + (b - m) ** 2, 0) / (ls.length - 1)) : null;
      const half = spreadOf(sd, ls.length) || 0;
      mean.push(10 ** m); lo.push(10 ** (m - half)); hi.push(10 ** (m + half)); n.push(ls.length);
    }
    return { mean, lo, hi, n, rows: members.length, stop };
  }) };
}
function curveGroupKeys(pageGroups) {
  // the groups whose mean curves are drawn: those ticked in the table, else the page's first ones
  if (S.curveGroups) return [...S.curveGroups];
  return pageGroups.filter(g => g.ids.some(hasTrace)).slice(0, MAX_GROUP_CURVES).map(g => g.key);
}
function toggleCurveGroup(key, on) {
  if (!S.curveGroups) S.curveGroups = new Set(curveGroupKeys(S.pageGroups || []));
  if (on) S.curveGroups.add(key); else S.curveGroups.delete(key);
  drawCurves(); writeHash();
}
function drawCurves() {
  // on uPlot (vendored): the ticked rows' loss curves, or with the table aggregated the mean curve
  // and spread band of the groups chosen; log y, a legend naming each curve with its value under
  // the cursor, a colour per curve
  const box = $('curves');
  if (curvesPlot) { curvesPlot.destroy(); curvesPlot = null; }
  box.dataset.bands = 0;
  if ((S.agg || S.selected.size) && !loadTraces(drawCurves)) {
    box.dataset.mode = 'loading'; box.innerHTML = '<p class="muted">loading the loss curves\u2026</p>'; return;
  }
  const common = { width: 560, height: 320, legend: { live: true }, cursor: { focus: { prox: 16 } }, focus: { alpha: 0.25 },
    scales: { x: { time: false }, y: { distr: 3 } }, axes: [{ label: 'iteration' }, { label: 'total loss (log)', size: 60 }] };
  const value = (u, v) => v === null ? '\u2014' : fmt(v);
  if (S.agg) {
    const byKey = new Map(aggregate(visibleRows()).map(g => [g.key, g]));
    const groups = curveGroupKeys(S.pageGroups || []).map(k => byKey.get(k)).filter(g => g && g.ids.some(id => D.traces[id]));
    box.dataset.mode = 'groups'; box.dataset.curves = groups.length; box.dataset.stopped = 0;
    if (!groups.length) { box.innerHTML = '<p class="muted">no group ticked (curve) has loss curves</p>'; return; }
    box.innerHTML = '';
    const { xs, curves } = groupCurves(groups);
    const name = g => aggKeys().map(c => (LABEL[c] || c) + ' ' + fmt(g[c])).join(', ');
    const series = [{ label: 'iteration' }], data = [xs], bands = [], hide = [];
    groups.forEach((g, i) => {
      const c = distinct(i), at = series.length, cv = curves[i];
      const atPoint = (u, v, si, k) => v === null || v === undefined ? '\u2014' : fmt(v) + ' (n ' + cv.n[k] + ')';
      series.push({ label: name(g) + ' (mean of ' + cv.rows + ' rows' + (cv.stop !== null ? '; stops at ' + cv.stop + ', fewer than half remain' : '') + ')',
                    stroke: c, width: 2, spanGaps: false, value: atPoint },
                  { label: 'band', stroke: alpha(c, 0.3), width: 0.5, spanGaps: false, value },
                  { label: 'band', stroke: alpha(c, 0.3), width: 0.5, spanGaps: false, value });
      data.push(cv.mean, cv.hi, cv.lo);
      hide.push(at + 1, at + 2);
      bands.push({ series: [at + 1, at + 2], fill: alpha(c, 0.15) });
      if (cv.stop !== null) box.dataset.stopped = Number(box.dataset.stopped) + 1;
    });
    box.dataset.bands = bands.length;
    curvesPlot = new uPlot({ ...common, axes: [{ label: 'iteration' }, { label: 'total loss (log), mean ± ' + SPREADS[S.spread], size: 60 }],
      series, bands }, data, box);
    // the bands' edges are series to uPlot: out of the legend, which names the groups only
    const legendRows = box.querySelectorAll('.u-legend tr.u-series');
    hide.forEach(i => { if (legendRows[i]) legendRows[i].style.display = 'none'; });
    return;
  }
  const ids = [...S.selected].filter(id => D.traces[id]);
  box.dataset.mode = 'rows'; box.dataset.curves = ids.length;
  if (!ids.length) { box.innerHTML = '<p class="muted">tick rows (\u2713) to overlay their loss curves; aggregate to see each group\'s mean curve</p>'; return; }
  box.innerHTML = '';
  const rows = ids.map(id => D.rows.find(r => r.id === id)), colour = r => distinct(rows.indexOf(r));
  const xs = [...new Set(ids.flatMap(id => D.traces[id].map(p => p[0])))].sort((a, b) => a - b);
  const at = new Map(xs.map((v, i) => [v, i]));
  const series = ids.map(id => { const ys = new Array(xs.length).fill(null); D.traces[id].forEach(p => { if (p[1] > 0) ys[at.get(p[0])] = p[1]; }); return ys; });
  curvesPlot = new uPlot({ ...common,
    series: [{ label: 'iteration' }].concat(rows.map(r => ({ label: title(r), stroke: colour(r), width: 1.5, spanGaps: true, value }))),
  }, [xs].concat(series), box);
}
// the address holds the whole view: filter, page, open rows and their sources, ticked rows, sort,
// grouping, aggregation and its keys, one group's rows, the scatter's axes
function writeHash() {
  const h = new URLSearchParams();
  if (S.filter) h.set('filter', S.filter); if (S.page) h.set('page', S.page + 1);
  const open = [...S.open]; if (open.length) h.set('open', open.join(','));
  const ab = open.filter(id => S.ab[id]).map(id => S.ab[id]); if (ab.length) h.set('ab', ab.join(','));
  if (S.selected.size) h.set('select', [...S.selected].join(','));
  if (S.sortKey) h.set('sort', (S.asc ? '' : '-') + S.sortKey);
  if (!S.group) h.set('group', '0');
  h.set('agg', S.agg ? '1' : '0');  // the default depends on the study: said either way
  if (S.spread !== 'sd') h.set('spread', S.spread);
  if (S.curveGroups) h.set('curves', JSON.stringify([...S.curveGroups]));
  if (S.aggBy) h.set('by', S.aggBy.join(','));
  if (S.only) { h.set('only', [...S.only.ids].join(',')); h.set('onlylabel', S.only.label); }
  if (S.ref) h.set('ref', S.ref);
  if (S.hidden.size) h.set('hide', [...S.hidden].join(','));
  h.set('x', $('sx').value); h.set('y', $('sy').value);
  if ($('colour').value) h.set('colour', $('colour').value);
  if ($('logx').value !== 'auto') h.set('logx', $('logx').value);
  if (window.scrollY) h.set('scroll', Math.round(window.scrollY));
  history.replaceState(null, '', '#' + h.toString());
}
function readHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  S.filter = h.get('filter') || ''; $('filter').value = S.filter;
  S.page = Math.max(0, (parseInt(h.get('page')) || 1) - 1);
  const open = (h.get('open') || '').split(',').filter(Boolean), ab = (h.get('ab') || '').split(',');
  open.forEach((id, i) => { S.open.add(id); S.ab[id] = ab[i] || S.ab[id] || defaultSource(id); });
  (h.get('select') || '').split(',').filter(Boolean).forEach(id => S.selected.add(id));
  const sort = h.get('sort') || '';
  S.sortKey = sort.replace(/^-/, '') || null; S.asc = !sort.startsWith('-');
  S.group = h.get('group') !== '0'; $('group').checked = S.group;
  // aggregated by default where seeds vary, but an address that opens a row (a summary's link)
  // shows the rows
  S.agg = h.has('agg') ? h.get('agg') === '1' : SEEDS_VARY && !open.length; $('agg').checked = S.agg;
  S.spread = SPREADS[h.get('spread')] ? h.get('spread') : 'sd'; $('spread').value = S.spread;
  S.curveGroups = null;
  try {
    const picked = JSON.parse(h.get('curves') || 'null');
    if (Array.isArray(picked)) S.curveGroups = new Set(picked.filter(k => typeof k === 'string').slice(0, 50));
  } catch (err) { S.curveGroups = null; }  // an address edited by hand: the default groups
  const by = (h.get('by') || '').split(',').filter(c => KNOWN.has(c));
  S.aggBy = by.length ? by : null; $('aggby').value = aggKeys().join(',');
  const only = (h.get('only') || '').split(',').filter(Boolean);
  S.only = only.length ? { label: h.get('onlylabel') || only.length + ' rows', ids: new Set(only) } : null;
  for (const [key, box] of [['x', 'sx'], ['y', 'sy'], ['colour', 'colour'], ['logx', 'logx']]) {
    const v = h.get(key); if (v && [...$(box).options].some(o => o.value === v)) $(box).value = v;
  }
  if (open.length && !h.get('page')) { const i = visibleRows().findIndex(r => r.id === open[0]); if (i >= 0) S.page = Math.floor(i / PAGE); }
  S.scroll = parseInt(h.get('scroll')) || 0;
  S.ref = h.get('ref') || null;
  S.hidden = new Set((h.get('hide') || '').split(',').filter(c => D.columns.includes(c) && c !== 'label'));
  document.querySelectorAll('#columns input').forEach(box => { box.checked = !S.hidden.has(box.value); });
}
// Per-column widgets write terms into the filter text (the one language, and the address):
// checkboxes for a column of few values (col=a,b), a range for a numeric one (col>=x col<=y).
const WIDGET_COLUMNS = () => ['status', 'preset', 'content_name', 'style_name'].concat(D.params)
  .filter((c, i, all) => all.indexOf(c) === i && D.rows.some(r => r[c] !== null && r[c] !== undefined));
function widgetHtml(c) {
  const values = [...new Set(D.rows.map(r => r[c]).filter(v => v !== null && v !== undefined))].sort((a, b) => (a > b ? 1 : a < b ? -1 : 0));
  const name = esc(LABEL[c] || c);
  if (values.length <= 12)
    return '<fieldset data-col="' + esc(c) + '" data-kind="values"><legend>' + name + '</legend>' + values.map(v =>
      '<label><input type="checkbox" value="' + esc(v) + '"> ' + esc(fmt(v)) + '</label>').join(' ') + '</fieldset>';
  if (values.every(v => typeof v === 'number'))
    return '<fieldset data-col="' + esc(c) + '" data-kind="range"><legend>' + name + '</legend><input type="number" step="any" placeholder="' +
      esc(fmt(values[0])) + '" data-bound=">="> to <input type="number" step="any" placeholder="' + esc(fmt(values[values.length - 1])) + '" data-bound="<="></fieldset>';
  return '';
}
function termsWithout(text, col) {
  return filterTokens(text).filter(t => !new RegExp('^' + col + '(!=|<=|>=|=|<|>)').test(t));
}
function applyWidget(set) {
  const c = set.dataset.col, terms = termsWithout(S.filter, c);
  if (set.dataset.kind === 'values') {
    const on = [...set.querySelectorAll('input:checked')].map(i => i.value);
    if (on.length) terms.push(c + '=' + on.join(','));
  } else {
    set.querySelectorAll('input').forEach(i => { if (i.value !== '') terms.push(c + i.dataset.bound + i.value); });
  }
  S.filter = terms.join(' '); $('filter').value = S.filter; S.page = 0; render(); writeHash();
}
function syncWidgets() {
  // the widgets show what the filter text says of their columns
  const { terms } = parseTerms(S.filter);
  document.querySelectorAll('#widgets fieldset').forEach(set => {
    const mine = terms.filter(t => t.col === set.dataset.col);
    if (set.dataset.kind === 'values') {
      const on = new Set(mine.filter(t => t.op === '=').flatMap(t => t.vals));
      set.querySelectorAll('input').forEach(i => { i.checked = on.has(i.value); i.toggleAttribute('checked', i.checked); });
    } else {
      set.querySelectorAll('input').forEach(i => {
        const t = mine.find(t => t.op === i.dataset.bound); i.value = t ? t.vals[0] : ''; i.setAttribute('value', i.value);
      });
    }
  });
}
// the rows the table shows (every page), as CSV or as their ids
// What a spreadsheet may run as a formula: =, +, -, @ (or their full-width forms) first, after any
// spaces, line breaks, zero-width or bidi characters that hide them; or a tab or line break first.
const FORMULA = /^[\s\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]*[=+\-@\uFF1D\uFF0B\uFF0D\uFF20]|^[\t\r\n]/;
function csvCell(v) {
  let t = v === null || v === undefined ? '' : String(v);
  if (typeof v !== 'number' && FORMULA.test(t)) t = "'" + t;  // not a formula in a spreadsheet
  return /[",\n\r]/.test(t) ? '"' + t.replace(/"/g, '""') + '"' : t;
}
function exportRows(what) {
  const rows = visibleRows(), cols = ['id', 'name', 'content_name', 'style_name'].concat(D.columns.filter(c =>
    !['label', 'content_name', 'style_name'].includes(c)));
  const text = what === 'ids' ? rows.map(r => r.id).join('\n') + '\n'
    : [cols.join(',')].concat(rows.map(r => cols.map(c => csvCell(r[c])).join(','))).join('\n') + '\n';
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([text], { type: what === 'ids' ? 'text/plain' : 'text/csv' }));
  a.download = what === 'ids' ? 'batch-ast-row-ids.txt' : 'batch-ast-rows.csv';
  $('export-note').textContent = rows.length + ' rows exported as ' + a.download; $('export-note').dataset.rows = rows.length;
  a.click();
}
window.addEventListener('DOMContentLoaded', () => {
  const t0 = performance.now();
  const xChoices = D.params.concat(D.metrics), ys = D.metrics;
  $('sx').innerHTML = xChoices.map(c => '<option>' + esc(c) + '</option>').join('');
  $('colour').innerHTML = '<option value="">one colour</option>' + ['preset', 'content_name', 'style_name'].concat(D.params)
    .filter((c, i, all) => all.indexOf(c) === i && D.rows.some(r => r[c] !== undefined)).map(c => '<option>' + esc(c) + '</option>').join('');
  $('sy').innerHTML = ys.map(c => '<option>' + esc(c) + '</option>').join('');
  // a numeric hyperparameter by default (a preset column has one value once filtered)
  const numericParam = D.params.find(p => D.rows.some(r => typeof r[p] === 'number') && p !== 'seed');
  if (numericParam || D.params.length) $('sx').value = numericParam || D.params[0];
  if (ys.includes('style_distance_heldout')) $('sy').value = 'style_distance_heldout';
  $('columns').insertAdjacentHTML('beforeend', D.columns.filter(c => c !== 'label').map(c =>
    '<label><input type="checkbox" value="' + esc(c) + '" checked> ' + esc(LABEL[c] || c) + '</label>').join(' '));
  $('columns').addEventListener('change', e => {
    if (e.target.checked) S.hidden.delete(e.target.value); else S.hidden.add(e.target.value);
    render(); writeHash();
  });
  $('widgets').insertAdjacentHTML('beforeend', WIDGET_COLUMNS().map(widgetHtml).join(''));
  $('widgets').addEventListener('change', e => { const set = e.target.closest('fieldset'); if (set) applyWidget(set); });
  readHash(); showMedia(); render(); syncWidgets();
  if (S.scroll) window.scrollTo(0, S.scroll);
  let pending = null;  // the scroll position goes into the address, once scrolling stops
  window.addEventListener('scroll', () => { clearTimeout(pending); pending = setTimeout(writeHash, 300); });
  $('export-csv').onclick = () => exportRows('csv'); $('export-ids').onclick = () => exportRows('ids');
  let typing = null;  // the table and charts follow the filter box once typing pauses
  $('filter').addEventListener('input', e => {
    clearTimeout(typing);
    typing = setTimeout(() => { S.filter = e.target.value; S.page = 0; render(); writeHash(); syncWidgets(); }, FILTER_DEBOUNCE_MS);
  });
  $('spread').addEventListener('change', e => { S.spread = e.target.value; render(); writeHash(); });
  brushing($('parallel'));
  $('group').addEventListener('change', e => { S.group = e.target.checked; render(); writeHash(); });
  $('agg').addEventListener('change', e => { S.agg = e.target.checked; S.page = 0; render(); writeHash(); });
  $('aggby').addEventListener('change', e => {
    const by = e.target.value.split(/[\s,]+/).filter(c => KNOWN.has(c));
    S.aggBy = by.length ? by : null; e.target.value = aggKeys().join(','); S.page = 0; render(); writeHash();
  });
  $('prev').onclick = () => { S.page = Math.max(0, S.page - 1); render(); writeHash(); };
  $('next').onclick = () => { S.page += 1; render(); writeHash(); };
  $('sx').onchange = $('sy').onchange = $('logx').onchange = () => { render(); writeHash(); };
  $('colour').onchange = () => { render(); writeHash(); };
  $('rows').addEventListener('click', e => {
    const th = e.target.closest('th[data-k]');
    if (th && th.dataset.k !== '#') {
      S.asc = S.sortKey === th.dataset.k ? !S.asc : true; S.sortKey = th.dataset.k;
      S.group = false; $('group').checked = false;  // a sort orders every row, not each content's
      render(); writeHash(); return;
    }
    const agg = e.target.closest('tr.agg');
    if (agg && e.target.classList.contains('curve-pick')) { toggleCurveGroup(agg.dataset.key, e.target.checked); return; }
    if (agg) { showGroup(agg.dataset.key); return; }
    const tr = e.target.closest('tr.row');
    if (tr && !e.target.closest('input, button, audio')) {
      const id = tr.dataset.id;
      if (S.open.has(id)) S.open.delete(id); else { S.open.add(id); S.ab[id] = S.ab[id] || defaultSource(id); }
      render(); writeHash();
    }
  });
  // links in the page (the summary's best rows) change the address: follow them
  window.addEventListener('hashchange', () => { readHash(); render(); syncWidgets(); });
  writeHash();  // the address now names the whole view, defaults included
  document.body.dataset.view = location.hash;
  document.body.dataset.readyMs = Math.round(performance.now() - t0);
});

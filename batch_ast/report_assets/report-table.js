// The table: rows page by page, or aggregated groups with their spread; opening rows.
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
  only.innerHTML = (S.only ? '<div>only the rows of one group: ' + esc(S.only.label) + ' <button data-action="show-all">show all</button></div>' : '') +
    (ref ? '<div id="reference" data-id="' + esc(ref.id) + '">reference for A/B: ' + esc(title(ref)) +
      ' <button data-action="pin" data-id="' + esc(ref.id) + '">unpin</button></div>' : '');
  const rows = visibleRows();
  S.renders += 1; document.body.dataset.renders = S.renders;
  if (!S.aggBy) $('aggby').value = aggKeys().join(',');
  if (S.agg) { S.charted = [rows, renderAggregated(rows)]; drawScatter(...S.charted); drawCurves(); return; }
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
        ' rows) <button data-action="play-content" data-id="' + esc(r.id) + '">play content</button></td></tr>');
    }
    const cells = shownColumns().map(c => '<td class="' + (typeof r[c] === 'number' ? '' : 'text') + (c === 'label' ? ' pin' : '') + '">' + esc(fmt(r[c])) + '</td>').join('');
    body.push('<tr class="row ' + esc(r.status) + '" data-id="' + esc(r.id) + '"><td><input type="checkbox" ' +
      (S.selected.has(r.id) ? 'checked' : '') + ' class="row-pick" data-id="' + esc(r.id) +
      '"></td><td>' + r._n + '</td>' + cells + '</tr>');
    if (S.open.has(r.id)) body.push('<tr class="details" data-for="' + esc(r.id) + '">' + details(r) + '</tr>');
  }
  $('rows').innerHTML = '<thead>' + head + '</thead><tbody>' + body.join('') + '</tbody>';
  $('count').textContent = rows.length + ' of ' + D.rows.length + ' rows; page ' + (S.page + 1) + ' of ' + pages;
  $('count').dataset.matching = rows.length;
  document.querySelectorAll('#rows img[data-src]').forEach(img => { img.src = img.dataset.src; track(img); });
  for (const id of S.open) if (S.ab[id]) switchAB(id, S.ab[id]);
  S.charted = [rows, null]; drawScatter(rows, null); drawCurves();
}
function redrawCharts() {
  // what changes the charts alone (colour, log x): the table stays as it is
  if (S.charted) drawScatter(...S.charted); else render();
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

// The address: the whole view written into it, and read back from it.
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
  if (S.axes) h.set('axes', S.axes.join(','));
  if (S.curveGroups) h.set('curves', JSON.stringify([...S.curveGroups]));
  if (S.aggBy) h.set('by', S.aggBy.join(','));
  if (S.only) { h.set('only', [...S.only.ids].join(',')); h.set('onlylabel', S.only.label); }
  if (S.ref) h.set('ref', S.ref);
  if (S.hidden.size) h.set('hide', [...S.hidden].join(','));
  h.set('x', $('sx').value); h.set('y', $('sy').value);
  if ($('colour').value) h.set('colour', $('colour').value);
  if ($('logx').value !== 'auto') h.set('logx', $('logx').value);
  // where the scroll listener saw the page last: reading window.scrollY here forced a layout of
  // the page just redrawn, a third of a chart redraw
  if (S.scrollY) h.set('scroll', Math.round(S.scrollY));
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
  const axesOrder = (h.get('axes') || '').split(',').filter(c => KNOWN.has(c));
  S.axes = axesOrder.length ? axesOrder : null;
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

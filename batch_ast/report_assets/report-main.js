// Start: controls filled, the view read from the address, events wired (delegated).
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
  if (S.scroll) { window.scrollTo(0, S.scroll); S.scrollY = window.scrollY; }
  let pending = null;  // the scroll position goes into the address, once scrolling stops
  window.addEventListener('scroll', () => { S.scrollY = window.scrollY; clearTimeout(pending); pending = setTimeout(writeHash, 300); });
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
  $('sx').onchange = $('sy').onchange = () => { render(); writeHash(); };  // the x may group the table
  $('colour').onchange = $('logx').onchange = () => { redrawCharts(); writeHash(); };
  // One listener per region, by what was clicked (data-action, data-open...): no handler is
  // written into the page's HTML
  document.addEventListener('click', e => {
    const el = e.target.closest('[data-action]');
    if (!el) return;
    const id = el.dataset.id;
    if (el.dataset.action === 'ab') switchAB(id, el.dataset.which);
    else if (el.dataset.action === 'pin') pinReference(id);
    else if (el.dataset.action === 'show-all') clearGroup();
    else if (el.dataset.action === 'play-content') playContent(el, id);
    else if (el.dataset.action === 'axis-left') moveAxisLeft(el.dataset.dim);
  });
  $('scatter').addEventListener('click', e => {
    const dot = e.target.closest('[data-open], [data-group]');
    if (dot && dot.dataset.open) openRow(dot.dataset.open);
    else if (dot) showGroup(dot.dataset.group);
  });
  $('rows').addEventListener('click', e => {
    if (e.target.classList.contains('row-pick')) { toggleSelect(e.target, e.target.dataset.id); return; }
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

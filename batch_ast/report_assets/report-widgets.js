// Per-column filter widgets, and exporting the filtered rows as CSV or ids.
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

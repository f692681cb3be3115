// The filter language: words, col=value, col=a,b, comparisons; the rows it leaves, sorted.
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

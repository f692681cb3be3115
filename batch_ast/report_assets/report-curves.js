// Loss curves (uPlot): ticked rows, or groups' means that stop where fewer than half remain.
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
    // a group named by the columns in which the drawn groups differ (the legend was a wall)
    const differ = aggKeys().filter(c => new Set(groups.map(g => JSON.stringify(g[c]))).size > 1);
    const name = g => (differ.length ? differ : aggKeys()).map(c => (LABEL[c] || c) + ' ' + fmt(g[c])).join(', ');
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

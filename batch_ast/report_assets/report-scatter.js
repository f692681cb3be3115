// The scatter: a metric against a hyperparameter or metric, rows or groups with error bars.
function drawScatter(rows, groups) {
  // rows (ok ones), or with the table aggregated its groups: mean ± std as error bars
  const x = $('sx').value, y = $('sy').value, W = 480, H = 320;
  const key = JSON.stringify([S.filter, S.agg, S.aggBy, S.spread, S.axes, S.only && [...S.only.ids], x, y, $('colour').value, $('logx').value, rows.length]);
  if (key === scatterKey) return;
  scatterKey = key;
  drawParallel(rows, groups);
  const { pts, numeric, logx, cats, sd, sx, sy, at } = remembered('scatter', [rows, groups, x, y, $('logx').value, S.spread], () => {
    const has = p => p[x] !== null && p[x] !== undefined && typeof p[y] === 'number';
    const pts = groups ? groups.filter(has) : rows.filter(r => r.status === 'ok' && has(r));
    if (!pts.length) return { pts };
    const numeric = pts.every(p => typeof p[x] === 'number'), logx = numeric && useLogX(pts, x);
    const cats = numeric ? [] : [...new Set(pts.map(p => String(p[x])))];
    // (a spread below float rounding of the mean is none: equal values are not drawn as a bar)
    const sd = p => { const v = groups ? spreadOf(p[y + '_sd'], p[y + '_n']) : null; return v !== null && v > 1e-9 * Math.abs(p[y]) ? v : 0; };
    const sx = numeric ? scale(pts.map(p => p[x]), 46, W - 12, logx) : v => 46 + (cats.indexOf(String(v)) + 0.5) / cats.length * (W - 58);
    const sy = scale(pts.flatMap(p => [p[y] - sd(p), p[y] + sd(p)]), H - 32, 10);
    return { pts, numeric, logx, cats, sd, sx, sy, at: pts.map(p => [sx(p[x]), sy(p[y])]) };
  });
  $('scatter').dataset.points = pts.length; $('scatter').dataset.bars = 0;
  if (!pts.length) { $('scatter').innerHTML = '<p class="muted">no ok rows with both values</p>'; return; }
  const colour = colourer(pts);
  const labelsAndAxes = () => axes(numeric ? sx : null, sy, W, H) + (numeric ? '' : cats.map(c => '<text class="tick" x="' + sx(c).toFixed(1) + '" y="' + (H - 18) +
    '" font-size="10" text-anchor="middle">' + esc(c) + '</text>').join('')) + '<text x="' + (W / 2) + '" y="' + (H - 3) + '" font-size="11" text-anchor="middle">' +
    esc(x) + (logx ? ' (log)' : '') + '</text><text x="46" y="9" font-size="11">' + esc(y) + (groups ? ' (mean ± ' + SPREADS[S.spread] + ')' : '') + '</text>';
  $('scatter').dataset.logx = logx ? 1 : 0; $('scatter').dataset.canvas = 0;
  if (pts.length > CANVAS_ABOVE) {
    const canvas = plotWithCanvas($('scatter'), W, H, svg(W, H, labelsAndAxes()), colour.legend), ctx = canvas.getContext('2d');
    let bars = 0;
    ctx.globalAlpha = 0.5;
    // a colour at a time (a fill style set per point took a third of a 20,000-point redraw), each
    // point a 4-px square on whole pixels (an arc and a fill per point took another third)
    for (const [c, members] of byColour(pts, colour)) {
      ctx.fillStyle = ctx.strokeStyle = c;
      for (const i of members) {
        const p = pts[i];
        if (sd(p)) { bars++; ctx.beginPath(); ctx.moveTo(at[i][0], sy(p[y] - sd(p))); ctx.lineTo(at[i][0], sy(p[y] + sd(p))); ctx.stroke(); }
        ctx.fillRect(Math.round(at[i][0]) - 2, Math.round(at[i][1]) - 2, 4, 4);
      }
    }
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
    const click = groups ? 'data-group="' + esc(p.key) + '"' : 'data-open="' + esc(p.id) + '"';
    const bar = sd(p) ? (bars++, '<line class="bar" x1="' + cx + '" x2="' + cx + '" y1="' + sy(p[y] - sd(p)).toFixed(1) + '" y2="' +
      sy(p[y] + sd(p)).toFixed(1) + '" stroke="' + colour(p) + '" stroke-opacity="0.6"/>') : '';
    return bar + '<circle cx="' + cx + '" cy="' + sy(p[y]).toFixed(1) + '" r="' + (groups ? 4 : 3) + '" fill="' + colour(p) + '" fill-opacity="0.65" ' +
      click + '><title>' + esc(what + ': ' + x + ' ' + fmt(p[x]) + ', ' + y + ' ' + fmt(p[y]) +
      (sd(p) ? ' ± ' + fmt(sd(p)) : '')) + '</title></circle>';
  }).join('');
  $('scatter').dataset.bars = bars;
  $('scatter').innerHTML = svg(W, H, labelsAndAxes() + marks) + colour.legend;
}

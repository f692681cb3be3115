// Media: the A/B player (content, style, output, a pinned reference), an opened row's details.
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
      '<button data-action="ab" data-id="' + esc(r.id) + '" data-which="' + k + '">' + label(k) + '</button>').join('') +
      ' <audio controls preload="none"></audio> <span class="muted">A/B: switching keeps the playback position; levels matched to the quietest</span></div>');
  }
  if (r.output_url) parts.push('<p><button class="pin-ref" data-action="pin" data-id="' + esc(r.id) + '">' +
    (S.ref === r.id ? 'unpin as the reference' : 'pin as the reference') + '</button> <span class="muted">' +
    (S.ref === r.id ? 'every opened row can play this output at its own position' :
     'then every opened row can switch to this output at the same position, level-matched') + '</span></p>');
  parts.push('<div class="figures">' + [['spectrogram_url', 'spectrograms'], ['loss_url', 'loss curve']].filter(([k]) => r[k])
    .map(([k, alt]) => '<img loading="lazy" alt="' + alt + '" data-src="' + esc(r[k]) + '">').join('') + '</div>');
  return parts.join('') + '</div></td>';
}

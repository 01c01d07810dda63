const base = document.body.dataset.base, study = document.body.dataset.study;
const lang = document.documentElement.lang;
const view = document.getElementById('view'), stage = document.getElementById('stage');
const slider = document.getElementById('slider'), pos = document.getElementById('pos');
const windowSel = document.getElementById('window'), play = document.getElementById('play');
let data = null, series = null, index = 0, frame = 1, zoom = 1, panX = 0, panY = 0, timer = null;
const imageUrl = (sop, f, size) => base + '/images/' + study + '/' + sop + '?frame=' + f +
  (windowSel.value ? '&window=' + windowSel.value : '') + (size ? '&size=' + size : '');
function place() {
  const fit = Math.min(stage.clientWidth / view.naturalWidth, stage.clientHeight / view.naturalHeight);
  const s = (isFinite(fit) && fit > 0 ? fit : 1) * zoom;
  view.style.transform = `translate(calc(-50% + ${panX}px), calc(-50% + ${panY}px)) scale(${s})`;
}
function show() {
  const inst = series.instances[index];
  view.src = imageUrl(inst.sop_uid, frame);
  view.dataset.sop = inst.sop_uid;
  slider.max = series.instances.length - 1; slider.value = index;
  pos.textContent = `${document.body.dataset.imageLabel} ${index + 1} / ${series.instances.length}` +
    (inst.frames > 1 ? ` · ${document.body.dataset.frameLabel} ${frame} / ${inst.frames}` : '');
  play.hidden = inst.frames <= 1;
  for (const d of [1, 2]) {  // warm the cache so scrolling does not wait for the next image
    const next = series.instances[index + d];
    if (next) new Image().src = imageUrl(next.sop_uid, 1);
  }
}
function go(i) {
  if (!series) return;
  index = Math.max(0, Math.min(series.instances.length - 1, i)); frame = 1; stopCine(); show();
}
function pick(s, button) {
  series = s; index = 0; frame = 1; zoom = 1; panX = panY = 0;
  document.querySelectorAll('#series button').forEach(b => b.classList.toggle('on', b === button));
  show();
}
function stopCine() { if (timer) { clearInterval(timer); timer = null; } }
play.onclick = () => {
  if (timer) return stopCine();
  const inst = series.instances[index];
  timer = setInterval(() => { frame = frame % inst.frames + 1; show(); }, 100);
};
view.onload = place;
window.onresize = place;
slider.oninput = () => go(Number(slider.value));
windowSel.onchange = show;
document.getElementById('fit').onclick = () => { zoom = 1; panX = panY = 0; place(); };
stage.addEventListener('wheel', e => {
  e.preventDefault();
  if (e.ctrlKey) { zoom = Math.max(0.2, Math.min(10, zoom * (e.deltaY < 0 ? 1.15 : 1 / 1.15))); place(); }
  else go(index + (e.deltaY > 0 ? 1 : -1));
}, {passive: false});
document.addEventListener('keydown', e => {
  if (e.key === 'ArrowDown' || e.key === 'ArrowRight' || e.key === 'PageDown') go(index + 1);
  if (e.key === 'ArrowUp' || e.key === 'ArrowLeft' || e.key === 'PageUp') go(index - 1);
});
let drag = null;
stage.addEventListener('pointerdown', e => { drag = {x: e.clientX, y: e.clientY, px: panX, py: panY, t: e.pointerType}; stage.setPointerCapture(e.pointerId); });
stage.addEventListener('pointermove', e => {
  if (!drag) return;
  if (drag.t === 'touch' && zoom === 1) {  // on a tablet a vertical swipe scrolls
    const steps = Math.trunc((e.clientY - drag.y) / 20);
    if (steps) { go(index - steps); drag.y = e.clientY; }
    return;
  }
  panX = drag.px + e.clientX - drag.x; panY = drag.py + e.clientY - drag.y; place();
});
stage.addEventListener('pointerup', () => { drag = null; });
fetch(base + '/studies/' + study + '.json').then(r => {
  if (!r.ok) throw new Error(r.status);
  return r.json();
}).then(d => {
  data = d;
  document.getElementById('heading').textContent =
    `${d.patient.name.replaceAll('^', ' ')} · ${d.patient.id} · ${d.date} ${d.description}`;
  const list = document.getElementById('series');
  d.series.forEach((s, i) => {
    const b = document.createElement('button');
    const mid = s.instances[Math.floor(s.instances.length / 2)];
    b.innerHTML = `<img alt="" src="${imageUrl(mid.sop_uid, 1, 96)}">` +
      `${s.modality} ${s.number} ${s.description} (${s.instances.length})`;
    b.onclick = () => pick(s, b);
    list.appendChild(b);
    if (i === 0) pick(s, b);
  });
}).catch(e => { document.getElementById('heading').textContent = 'Error ' + e.message; });
document.getElementById('mark').onclick = async () => {
  const status = document.getElementById('status'), button = document.getElementById('mark');
  const sop = series.instances[index].sop_uid;
  const r = await fetch(base + '/studies/' + study + '/key-images', {
    method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({sop_uids: [sop], title_code: '113000'}),
  });
  status.textContent = r.ok ? button.dataset.done : 'Error ' + r.status;
};

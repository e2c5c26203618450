/* trakscope report: explorer and suspects grid. Data comes from the JSON block; every string from it is
   written with textContent (never innerHTML), so class names and ids render as text. No network. */
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("report-data").textContent);
  var CLASSES = D.classes;
  var TRAIN = D.splits.train;
  var TEST = D.splits.test;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function className(c) { return c >= 0 && c < CLASSES.length ? CLASSES[c] : "?"; }
  function decode(b64, Type) {
    var bin = atob(b64), bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new Type(bytes.buffer);
  }
  function fmtScore(x) {
    if (x === null || x === undefined || isNaN(x)) return "";
    var a = Math.abs(x);
    var s = a !== 0 && (a < 1e-3 || a >= 1e4) ? x.toExponential(2) : x.toPrecision(3);
    return x > 0 ? "+" + s : s;
  }

  /* ---- thumbnails: sprite sheets decoded on first use ---- */
  var sheets = {};
  function sheet(split, s) {
    var key = split + ":" + s;
    if (!sheets[key]) {
      sheets[key] = new Promise(function (resolve) {
        var img = new Image();
        img.onload = function () { resolve(img); };
        img.onerror = function () { resolve(null); };
        img.src = D.thumbs[split].sheets[s];
      });
    }
    return sheets[key];
  }
  function thumb(split, i, cls) {
    var info = D.thumbs[split], c = el("canvas", cls || "thumb");
    if (!info) return c;
    var t = info.size, per = info.cols * info.cols, cell = i % per;
    c.width = t; c.height = t;
    if (t <= 32) c.classList.add("pixel");
    sheet(split, Math.floor(i / per)).then(function (img) {
      if (img) c.getContext("2d").drawImage(img, (cell % info.cols) * t, Math.floor(cell / info.cols) * t, t, t, 0, 0, t, t);
    });
    return c;
  }

  /* ---- a training tile: image, score, label chips, noisy badge ---- */
  function trainTile(i, score, extra) {
    var f = el("figure", "tile");
    f.dataset.index = String(i);
    if (TRAIN.noisy[i]) f.classList.add("is-noisy");
    f.appendChild(thumb("train", i));
    var cap = el("figcaption");
    var row = el("div", "row");
    row.appendChild(el("span", "score " + (score > 0 ? "pos" : score < 0 ? "neg" : ""), fmtScore(score)));
    row.appendChild(el("span", "idx", "#" + i));
    cap.appendChild(row);
    var chips = el("div", "chips");
    var lab = el("span", "chip", "label: " + className(TRAIN.label[i]));
    lab.title = "training label";
    chips.appendChild(lab);
    if (TRAIN.true[i] !== TRAIN.label[i]) chips.appendChild(el("span", "chip true", "true: " + className(TRAIN.true[i])));
    if (extra) chips.appendChild(extra);
    if (TRAIN.noisy[i]) chips.appendChild(el("span", "badge", "noisy"));
    cap.appendChild(chips);
    f.title = "train #" + i + " · " + TRAIN.source_id[i];
    f.appendChild(cap);
    return f;
  }

  function select(options, value, onChange) {
    var s = el("select");
    options.forEach(function (o) {
      var opt = el("option", null, o[1]);
      opt.value = String(o[0]);
      s.appendChild(opt);
    });
    s.value = String(value);
    s.addEventListener("change", function () { onChange(s.value); });
    return s;
  }
  function labeled(text, control) {
    var l = el("label", "ctl");
    l.appendChild(el("span", null, text));
    l.appendChild(control);
    return l;
  }
  function button(text, onClick, cls) {
    var b = el("button", cls || null, text);
    b.type = "button";
    b.addEventListener("click", onClick);
    return b;
  }
  function classOptions(allText) {
    return [[-1, allText]].concat(CLASSES.map(function (c, i) { return [i, c]; }));
  }
  function pager(page, pages, go) {
    var p = el("div", "pager");
    var prev = button("‹", function () { go(page - 1); }), next = button("›", function () { go(page + 1); });
    prev.disabled = page <= 0; next.disabled = page >= pages - 1;
    p.appendChild(prev);
    p.appendChild(el("span", null, "page " + (pages ? page + 1 : 0) + " / " + pages));
    p.appendChild(next);
    return p;
  }

  /* ================= explorer ================= */
  function Explorer(root) {
    var X = D.explorer, K = X.k, VIEWS = Object.keys(X.views), lists = {};
    VIEWS.forEach(function (v) {
      var p = X.views[v];
      lists[v] = { pos: decode(p.pos_idx, Int32Array), posS: decode(p.pos_score, Float32Array),
                   neg: decode(p.neg_idx, Int32Array), negS: decode(p.neg_score, Float32Array) };
    });
    var hasPred = Array.isArray(TEST.pred);
    var st = { cls: -1, mis: false, page: 0, cur: 0, k: Math.min(8, K), view: X["default"] };
    var PER_PAGE = 40;

    function matching() {
      var out = [];
      for (var i = 0; i < TEST.n; i++) {
        if (st.cls >= 0 && TEST.label[i] !== st.cls) continue;
        if (st.mis && (!hasPred || TEST.pred[i] === TEST.label[i])) continue;
        out.push(i);
      }
      return out;
    }

    var controls = el("div", "controls");
    var idxInput = el("input");
    idxInput.type = "number"; idxInput.min = "0"; idxInput.max = String(TEST.n - 1); idxInput.id = "ex-index";
    idxInput.addEventListener("change", function () {
      var v = parseInt(idxInput.value, 10);
      // only on a real change: a redraw between mousedown and mouseup would swallow a click elsewhere
      if (!isNaN(v) && v >= 0 && v < TEST.n && v !== st.cur) choose(v, true);
    });
    controls.appendChild(labeled("test example #", idxInput));
    var clsSel = select(classOptions("all classes"), -1, function (v) { st.cls = +v; st.page = 0; firstMatch(); });
    clsSel.id = "ex-class";
    controls.appendChild(labeled("class", clsSel));
    var mis = el("input");
    mis.type = "checkbox"; mis.id = "ex-mis"; mis.disabled = !hasPred;
    mis.addEventListener("change", function () { st.mis = mis.checked; st.page = 0; firstMatch(); });
    controls.appendChild(labeled("misclassified only", mis));
    var kOpts = [4, 8, 12, 16, 24, 48].filter(function (k) { return k <= K; });
    if (kOpts.indexOf(K) < 0) kOpts.push(K);
    var kSel = select(kOpts.map(function (k) { return [k, String(k)]; }), st.k, function (v) { st.k = +v; drawMain(); });
    kSel.id = "ex-k";
    controls.appendChild(labeled("top k", kSel));
    var viewSel = select(VIEWS.map(function (v) { return [v, v]; }), st.view, function (v) { st.view = v; drawMain(); });
    viewSel.id = "ex-view";
    controls.appendChild(labeled("view", viewSel));
    controls.appendChild(button("← prev", function () { step(-1); }));
    controls.appendChild(button("next →", function () { step(1); }));
    var picker = el("div", "picker"), main = el("div", "explorer-main");
    var viewNote = el("div", "muted view-note");
    viewNote.id = "ex-view-note";
    root.appendChild(controls); root.appendChild(viewNote); root.appendChild(picker); root.appendChild(main);

    function step(d) {
      var m = matching();
      if (!m.length) return;
      var at = m.indexOf(st.cur);
      var nxt = at < 0 ? m[0] : m[Math.max(0, Math.min(m.length - 1, at + d))];
      choose(nxt, true);
    }
    function firstMatch() {
      var m = matching();
      if (m.length && m.indexOf(st.cur) < 0) st.cur = m[0];
      draw();
    }
    function choose(i, follow) {
      st.cur = i;
      if (follow) {
        var at = matching().indexOf(i);
        if (at >= 0) st.page = Math.floor(at / PER_PAGE);
      }
      draw();
    }

    function drawPicker() {
      picker.textContent = "";
      var m = matching(), pages = Math.ceil(m.length / PER_PAGE);
      st.page = Math.max(0, Math.min(st.page, pages - 1));
      var head = el("div", "picker-head");
      head.appendChild(el("span", "muted", m.length + " matching test examples"));
      head.appendChild(pager(st.page, pages, function (p) { st.page = p; drawPicker(); }));
      picker.appendChild(head);
      var strip = el("div", "strip");
      m.slice(st.page * PER_PAGE, (st.page + 1) * PER_PAGE).forEach(function (i) {
        var b = el("button", "pick" + (i === st.cur ? " on" : ""));
        b.type = "button";
        b.dataset.index = String(i);
        b.title = "test #" + i + " · " + className(TEST.label[i]);
        if (hasPred && TEST.pred[i] !== TEST.label[i]) b.classList.add("wrong");
        b.appendChild(thumb("test", i, "thumb small"));
        b.addEventListener("click", function () { choose(i, false); });
        strip.appendChild(b);
      });
      picker.appendChild(strip);
    }

    function gallery(id, title, note, idx, sc) {
      var g = el("div", "gallery");
      g.id = id;
      var h = el("h3", null, title);
      h.appendChild(el("span", "muted", " " + note));
      g.appendChild(h);
      var grid = el("div", "grid");
      var base = st.cur * K;
      for (var j = 0; j < st.k; j++) grid.appendChild(trainTile(idx[base + j], sc[base + j]));
      g.appendChild(grid);
      return g;
    }

    function drawMain() {
      main.textContent = "";
      viewNote.textContent = "view " + st.view + ": " + X.questions[st.view] +
        (VIEWS.length > 1 ? " (the other: " + VIEWS.filter(function (v) { return v !== st.view; }).map(
          function (v) { return v + ", " + X.questions[v]; }).join("; ") + ")" : "");
      var L = lists[st.view];
      var i = st.cur, q = el("div", "query");
      q.id = "query";
      q.dataset.index = String(i);
      q.appendChild(thumb("test", i, "thumb big"));
      q.appendChild(el("div", "qtitle", "test #" + i));
      var chips = el("div", "chips");
      chips.appendChild(el("span", "chip", "label: " + className(TEST.label[i])));
      if (hasPred) {
        var ok = TEST.pred[i] === TEST.label[i];
        chips.appendChild(el("span", "chip " + (ok ? "ok" : "wrong"),
          "predicted: " + className(TEST.pred[i]) + " (" + Math.round(100 * TEST.conf[i]) + "%)"));
      }
      q.appendChild(chips);
      q.appendChild(el("div", "muted small", TEST.source_id[i]));
      main.appendChild(q);
      var gs = el("div", "galleries");
      var name = "“" + className(TEST.label[i]) + "”";
      gs.appendChild(gallery("pos-gallery", "Most positive (" + st.view + " view)",
        "training examples that push the model towards " + name, L.pos, L.posS));
      gs.appendChild(gallery("neg-gallery", "Most negative (" + st.view + " view)",
        "training examples that push it away from " + name, L.neg, L.negS));
      main.appendChild(gs);
    }

    function draw() {
      idxInput.value = String(st.cur);
      drawPicker();
      drawMain();
    }
    document.addEventListener("keydown", function (e) {
      var t = e.target && e.target.tagName;
      if (t === "INPUT" || t === "SELECT") return;
      var r = root.getBoundingClientRect();
      if (r.bottom < 0 || r.top > window.innerHeight) return;
      if (e.key === "ArrowRight") step(1);
      if (e.key === "ArrowLeft") step(-1);
    });
    draw();
  }

  /* ================= suspects ================= */
  function Suspects(root) {
    var S = D.suspects, PER_PAGE = 48;
    var def = S.primary || S.scorers[0];  // the registry's primary scorer, from the page's data
    var nNoisy = TRAIN.noisy.reduce(function (a, b) { return a + b; }, 0);
    var st = { scorer: def, cls: -1, page: 0, flag: nNoisy > 0 ? nNoisy : Math.max(1, Math.round(0.05 * TRAIN.n)) };

    var controls = el("div", "controls");
    var sc = select(S.scorers.map(function (s) { return [s, s]; }), st.scorer, function (v) { st.scorer = v; st.page = 0; draw(); });
    sc.id = "sus-scorer";
    controls.appendChild(labeled("ranked by", sc));
    var cls = select(classOptions("all given labels"), -1, function (v) { st.cls = +v; st.page = 0; draw(); });
    cls.id = "sus-class";
    controls.appendChild(labeled("given label", cls));
    var flag = el("input");
    flag.type = "number"; flag.min = "0"; flag.max = String(TRAIN.n); flag.value = String(st.flag); flag.id = "sus-flag";
    flag.addEventListener("change", function () {
      var v = parseInt(flag.value, 10);
      if (!isNaN(v) && v >= 0) { st.flag = Math.min(v, TRAIN.n); draw(); }
    });
    controls.appendChild(labeled("flag top", flag));
    var dl = button("download keep-list (CSV)", download, "primary");
    dl.id = "sus-download";
    controls.appendChild(dl);
    var info = el("div", "muted"), grid = el("div", "grid"), foot = el("div");
    grid.id = "suspects-grid";
    root.appendChild(controls); root.appendChild(info); root.appendChild(grid); root.appendChild(foot);

    function flagged() {
      var set = new Set(), order = S.order[st.scorer];
      for (var r = 0; r < Math.min(st.flag, order.length); r++) set.add(order[r]);
      return set;
    }
    // As `trakscope export` lists it: the training examples not dropped (canaries never are, and keep their true
    // label), then the validation split carved from the same pool (split=val), so that retraining loses only the drop.
    var KEEP = D.keep || {}, CANARY = new Map();
    (KEEP.canary || []).forEach(function (i, j) { CANARY.set(i, KEEP.canary_true[j]); });
    function dropped(drop) {
      var out = new Set();
      drop.forEach(function (i) { if (!CANARY.has(i)) out.add(i); });
      return out;
    }
    function download() {
      var drop = dropped(flagged()), lines = ["index,split,source_id,label"], V = KEEP.val;
      for (var i = 0; i < TRAIN.n; i++) {
        if (drop.has(i)) continue;
        var label = CANARY.has(i) ? CANARY.get(i) : TRAIN.label[i];
        lines.push(i + ",train," + csvCell(TRAIN.source_id[i]) + "," + label);
      }
      if (V) for (var v = 0; v < V.index.length; v++) lines.push(V.index[v] + ",val," + csvCell(V.source_id[v]) + "," + V.label[v]);
      var url = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "text/csv" }));
      var a = el("a");
      a.href = url; a.download = "keep_" + st.scorer.replace(/[^A-Za-z0-9_-]/g, "_") + "_drop" + drop.size + ".csv";
      document.body.appendChild(a); a.click(); a.remove();
      setTimeout(function () { URL.revokeObjectURL(url); }, 5000);
    }
    function suggestionChip(i) {  // the suggested label (out-of-sample where detect had them), with its probability
      var sug = S.suggested[i], keep = sug === TRAIN.label[i];
      var chip = el("span", "chip suggest " + (keep ? "ok" : "wrong"),
        "suggested: " + className(sug) + " (" + Math.round(100 * S.suggested_prob[i]) + "%)");
      chip.title = (keep ? "the suggestion keeps the given label" : "suggested label") + ", from the " +
        String(S.suggestion_source).replace("_", "-") + " probabilities";
      return chip;
    }
    function csvCell(s) { return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; }

    function draw() {
      var order = S.order[st.scorer], rank = {}, rows = [];
      for (var r = 0; r < order.length; r++) {
        var i = order[r];
        if (st.cls >= 0 && TRAIN.label[i] !== st.cls) continue;
        rank[i] = r + 1;
        rows.push(i);
      }
      var pages = Math.ceil(rows.length / PER_PAGE);
      st.page = Math.max(0, Math.min(st.page, pages - 1));
      var drop = flagged(), shown = rows.slice(st.page * PER_PAGE, (st.page + 1) * PER_PAGE);
      var noisyFlagged = 0;
      drop.forEach(function (i) { noisyFlagged += TRAIN.noisy[i]; });
      var about = (S.descriptions || {})[st.scorer];
      info.textContent = (about ? st.scorer + ": " + about + ". " : "") +
        rows.length + " training examples · " + drop.size + " flagged by " + st.scorer +
        (nNoisy ? " (" + noisyFlagged + " of them planted noise, of " + nNoisy + ")" : "") +
        " · the keep-list holds the other " + (TRAIN.n - dropped(drop).size) + " training examples" +
        (KEEP.val ? " and the " + KEEP.val.index.length + " validation examples carved from the same pool" : "") +
        (KEEP.canary && KEEP.canary.length ? " (canaries kept, with their true label)" : "");
      grid.textContent = "";
      var scores = S.score[st.scorer];
      shown.forEach(function (i) {
        var p = S.predicted[i] >= 0 ? S.predicted[i] : (TRAIN.pred ? TRAIN.pred[i] : -1);
        var chip = p >= 0 ? el("span", "chip " + (p === TRAIN.label[i] ? "ok" : "wrong"), "pred: " + className(p)) : null;
        if (S.suggested) chip = suggestionChip(i);
        var t = trainTile(i, scores ? scores[i] : NaN, chip);
        var badge = el("span", "rank" + (drop.has(i) ? " flagged" : ""), String(rank[i]));
        badge.title = "rank " + rank[i] + " by " + st.scorer + (drop.has(i) ? " (flagged)" : "");
        t.appendChild(badge);
        grid.appendChild(t);
      });
      foot.textContent = "";
      foot.appendChild(pager(st.page, pages, function (p) { st.page = p; draw(); }));
    }
    draw();
  }

  var ex = document.getElementById("explorer-app");
  if (ex && D.explorer) Explorer(ex);
  var su = document.getElementById("suspects-app");
  if (su && D.suspects && D.suspects.scorers.length) Suspects(su);
})();

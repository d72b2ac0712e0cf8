/* The dashboard's pages: read the JSON API (same origin, Airflow's login cookie), draw tables and uPlot
   charts, and poll every few seconds so a running session updates without reloading the page. */
(function () {
  "use strict";
  const body = document.body;
  const api = body.dataset.api;
  const root = body.dataset.root;
  const airflow = body.dataset.airflow;
  const pollMs = Number(body.dataset.pollMs) || 5000;
  const COLORS = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1"];
  const LIMIT_COLOR = "#e53e3e";  // the session's quality limits and the FSC 0.143 line
  const STAGE_LABELS = {
    motion_correction: "Motion correction", ctf: "CTF", particle_picking: "Particle picking",
    ice_thickness: "Ice thickness", class2d: "2D classification", class3d: "3D classification",
    refinement: "Refinement", bfactor: "B-factor points", extraction: "Extraction", ingest: "Ingest",
  };
  const THUMBS = [["micrograph", "Micrograph"], ["picks", "Picks"], ["ctf_fit", "CTF fit"], ["drift", "Drift"]];
  const TOMO_THUMBS = [["central_slice", "Central slice"], ["projection_xz", "XZ view"],
    ["denoised_slice", "Denoised (raw | denoised)"], ["segmentation_slice", "Membranes"],
    ["segmentation_projection", "Membranes, XY projection"], ["alignment_plot", "Alignment"], ["tilt_movie", "Tilts"]];

  // --- small helpers ---------------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "onclick") node.addEventListener("click", value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }
  function fmt(value, decimals) {
    return value === null || value === undefined ? "–" : Number(value).toFixed(decimals);
  }
  function utc(iso) {
    return iso ? new Date(iso).toISOString().replace("T", " ").slice(0, 19) : "–";
  }
  function withUnit(label, unit) {
    return unit ? `${label} (${unit})` : label;
  }
  // A link into Airflow's own UI. Inside Airflow's plugin frame (same origin, sandboxed without top
  // navigation) the frame asks the surrounding UI's router to go there instead of nesting the UI.
  function airflowLink(path, text) {
    const link = el("a", {href: airflow + path, class: "airflow-link"}, text);
    link.addEventListener("click", (event) => {
      try {
        if (window.top !== window && window.top.location.origin === window.location.origin) {
          event.preventDefault();
          window.top.history.pushState({}, "", link.href);
          window.top.dispatchEvent(new PopStateEvent("popstate", {state: {}}));
        }
      } catch (ignored) { /* another origin: follow the link in the frame */ }
    });
    return link;
  }
  function runLink(run) {
    if (!run) return "–";
    return airflowLink(`/dags/${encodeURIComponent(run.dag_id)}/runs/${encodeURIComponent(run.run_id)}`,
      `${run.dag_id} · ${run.status}`);
  }

  async function getJSON(path) {
    const response = await fetch(api + path, {credentials: "same-origin", headers: {Accept: "application/json"}});
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail || detail; } catch (ignored) { /* not JSON */ }
      const error = new Error(`${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
      error.status = response.status;
      throw error;
    }
    return response.json();
  }
  function showError(error) {
    const box = document.getElementById("error");
    box.replaceChildren(error.status === 401 ? "Your Airflow login has expired: " : "Could not refresh: ",
      error.status === 401 ? el("a", {href: `${airflow}/auth/login?next=${encodeURIComponent(location.href)}`},
        "log in again") : error.message);
    box.hidden = false;
  }
  // Refresh now and then every pollMs; the returned function refreshes at once (after a click).
  function poll(refresh) {
    let timer = null;
    let generation = 0;
    async function tick() {
      clearTimeout(timer);
      const mine = ++generation;
      try {
        await refresh(() => mine === generation);
        document.getElementById("error").hidden = true;
        document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
      } catch (error) {
        showError(error);
      }
      if (mine === generation) timer = setTimeout(tick, pollMs);
    }
    tick();
    return tick;
  }
  // Rebuild a container's children only when what they show changed: polling then leaves the page
  // (selection, focus, the rows a reader is looking at) alone until new results arrive.
  function renderIfChanged(container, data, build) {
    const key = JSON.stringify(data);
    if (container.dataset.key === key) return;
    container.dataset.key = key;
    container.replaceChildren(...build());
  }
  function pager(nav, page, go) {
    const from = page.total ? page.offset + 1 : 0;
    const to = Math.min(page.offset + page.limit, page.total);
    renderIfChanged(nav, [page.offset, page.limit, page.total], () => [
      el("button", {type: "button", disabled: page.offset === 0, onclick: () => go(Math.max(0, page.offset - page.limit))}, "Previous"),
      el("span", {class: "range"}, `${from}–${to} of ${page.total}`),
      el("button", {type: "button", disabled: to >= page.total, onclick: () => go(page.offset + page.limit)}, "Next")]);
  }

  // --- sessions page ---------------------------------------------------------------------------------
  function sessionRow(s) {
    const cell = (field, value, cls) => el("td", {"data-field": field, class: cls}, value);
    return el("tr", {"data-session-id": s.session_id},
      cell("name", el("a", {href: `${root}/sessions/${s.session_id}`}, s.name)),
      cell("experiment", s.experiment),
      cell("recipes", s.recipes.join(", ")),
      cell("state", el("span", {class: `badge ${s.state}`}, s.state)),
      cell("started", utc(s.started)),
      cell("ended", utc(s.ended)),
      cell("end_reason", s.end_reason || "–", "reason"),
      cell("files_claimed", s.files_claimed, "num"),
      cell("movies", s.movies, "num"),
      cell("motion_correction", s.processed.motion_correction, "num"),
      cell("ctf", s.processed.ctf, "num"),
      cell("particle_picking", s.processed.particle_picking, "num"),
      cell("ice_thickness", s.processed.ice_thickness, "num"),
      cell("failed", s.failed, "num"),
      cell("last_activity", utc(s.last_activity)),
      cell("latest_run", runLink(s.latest_run)));
  }
  function sessionsPage() {
    const state = {offset: 0, limit: 50};
    const refreshNow = poll(async (current) => {
      const page = await getJSON(`/sessions?offset=${state.offset}&limit=${state.limit}`);
      if (!current()) return;
      renderIfChanged(document.querySelector("#sessions tbody"), page.sessions, () => page.sessions.map(sessionRow));
      document.getElementById("empty").hidden = page.total > 0;
      pager(document.getElementById("pager"), page, (offset) => { state.offset = offset; refreshNow(); });
    });
  }

  // --- charts ----------------------------------------------------------------------------------------
  // Lines at fixed values (the session's quality limits, FSC = 0.143), drawn over a chart after uPlot
  // draws it: horizontal across the plot for axis "y", vertical for "x". Where they were drawn (canvas
  // pixels) goes into the holder's data-limit-lines, so a test can look at those pixels.
  function linesPlugin(axis) {
    return {hooks: {draw: [(u) => {
      const drawn = [];
      const ctx = u.ctx;
      const {left, top, width, height} = u.bbox;
      ctx.save();
      ctx.strokeStyle = LIMIT_COLOR;
      ctx.fillStyle = LIMIT_COLOR;
      ctx.lineWidth = 2 * uPlot.pxRatio;
      ctx.font = `${11 * uPlot.pxRatio}px system-ui, sans-serif`;
      for (const line of u.lines || []) {
        const at = Math.round(u.valToPos(line.value, axis === "y" ? "y" : "x", true));
        if (axis === "y" ? at < top || at > top + height : at < left || at > left + width) continue;
        ctx.beginPath();
        if (axis === "y") { ctx.moveTo(left, at); ctx.lineTo(left + width, at); } else { ctx.moveTo(at, top); ctx.lineTo(at, top + height); }
        ctx.stroke();
        if (axis === "y") {  // the label at the right end, above the line: clear of the axis' tick labels
          ctx.textAlign = "right";
          ctx.fillText(line.label, left + width - 4 * uPlot.pxRatio, at - 4 * uPlot.pxRatio);
        } else {  // beside the line, on the side with room
          const right = at < left + 0.6 * width;
          ctx.textAlign = right ? "left" : "right";
          ctx.fillText(line.label, at + (right ? 3 : -3) * uPlot.pxRatio, top + 12 * uPlot.pxRatio);
        }
        drawn.push({value: line.value, label: line.label, axis, at,
          from: axis === "y" ? left : top, to: axis === "y" ? left + width : top + height});
      }
      ctx.restore();
      u.root.parentNode.dataset.limitLines = JSON.stringify(drawn);
    }]}};
  }
  // The lines of a metric's limits, labelled with the setting ("max 40 Å").
  function limitLines(limit, unit) {
    if (!limit) return [];
    const text = (word, value) => `${word} ${value}${unit ? " " + unit : ""}`;
    return [...(limit.low !== null ? [{value: limit.low, label: text("min", limit.low)}] : []),
      ...(limit.high !== null ? [{value: limit.high, label: text("max", limit.high)}] : [])];
  }
  // A scale range that shows the data and the lines, padded as uPlot pads.
  function rangeWithLines(u, dataMin, dataMax) {
    const values = (u.lines || []).map((line) => line.value);
    if (dataMin !== null && dataMin !== undefined) values.push(dataMin, dataMax);
    if (!values.length) return [0, 1];
    return uPlot.rangeNum(Math.min(...values), Math.max(...values), 0.1, true);
  }

  // Series of one chart share uPlot's x array: the union of their times, null where a series has none.
  function merged(seriesList) {
    const times = [...new Set(seriesList.flatMap((s) => s.t))].sort((a, b) => a - b);
    const columns = seriesList.map((s) => {
      const at = new Map(s.t.map((t, i) => [t, s.v[i]]));
      return times.map((t) => (at.has(t) ? at.get(t) : null));
    });
    return [times, ...columns];
  }
  function timeChart(container, id, title, unit, names) {
    const holder = el("div", {class: "plot", id: `plot-${id}`, "data-points": 0});
    container.append(holder);
    return new uPlot({
      title, width: 460, height: 230, plugins: [linesPlugin("y")],
      scales: {y: {range: rangeWithLines}},
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
      series: [{label: "Acquired (UTC)"}, ...names.map((name, i) => ({
        label: name, stroke: COLORS[i], width: 1, spanGaps: true, points: {show: true, size: 4, fill: COLORS[i]},
      }))],
      axes: [{label: "Acquisition time (UTC)"}, {label: withUnit(title, unit), size: 70}],
    }, [[], ...names.map(() => [])], holder);
  }
  function histogramChart(container, metric) {
    const holder = el("div", {class: "plot", id: `histogram-${metric.key}`});
    container.append(holder);
    const chart = new uPlot({
      title: withUnit(metric.label, metric.unit), width: 300, height: 200, plugins: [linesPlugin("x")],
      scales: {x: {time: false, range: (u) => rangeWithLines(u, u.edges && u.edges.length ? u.edges[0] : null,
        u.edges && u.edges.length ? u.edges[u.edges.length - 1] : null)}},
      series: [{label: withUnit(metric.label, metric.unit)}, {
        label: "Movies", stroke: COLORS[0], fill: "rgba(43,108,176,0.35)", width: 1,
        paths: uPlot.paths.bars({align: 1, size: [1, Infinity]}), points: {show: false},
      }],
      axes: [{label: withUnit(metric.label, metric.unit)}, {label: "Movies", size: 50}],
    }, [[], []], holder);
    chart.edges = [];
    return chart;
  }
  const TIME_CHARTS = [
    {id: "motion", keys: ["total_motion_a"]},
    {id: "defocus", keys: ["defocus_u_a", "defocus_v_a"], title: "Defocus"},
    {id: "astigmatism", keys: ["astigmatism_a"]},
    {id: "ctf_resolution", keys: ["ctf_resolution_a"]},
    {id: "ice", keys: ["ice_thickness"]},
    {id: "particles", keys: ["particles"]},
  ];

  // --- session page ----------------------------------------------------------------------------------
  function thumbs(container, movie, kinds, idOf) {
    const ids = movie ? idOf(movie) : {};
    renderIfChanged(container, ids, () => kinds.filter(([kind]) => ids[kind] !== undefined).map(([kind, label]) =>
      el("figure", {"data-kind": kind},
        el("img", {src: `${api}/images/${kind}/${ids[kind]}`, alt: label, loading: "lazy", title: "Click to enlarge"}),
        el("figcaption", {}, label))));
  }
  // A thumbnail shown at 256 px is too small to read a CTF fit or a drift plot: a click opens the image at
  // its own size (at most the window's) in a modal dialog; a click on it or Escape closes it.
  function enlargeOnClick() {
    const image = el("img", {alt: ""});
    const caption = el("span", {});
    const full = el("a", {target: "_blank", rel: "noopener"}, "open the image alone");
    const lightbox = el("dialog", {id: "lightbox"}, el("figure", {}, image, el("figcaption", {}, caption, " · ", full)));
    document.body.append(lightbox);
    document.addEventListener("click", (event) => {
      const thumb = event.target.closest(".thumbs img");
      if (thumb) {
        image.src = thumb.src;
        image.alt = thumb.alt;
        full.href = thumb.src;
        caption.textContent = thumb.alt;
        lightbox.showModal();
      } else if (event.target.closest("#lightbox") && !event.target.closest("#lightbox a")) {
        lightbox.close();
      }
    });
  }
  function facts(dl, pairs) {
    renderIfChanged(dl, pairs, () => pairs.flatMap(([field, label, value]) =>
      [el("dt", {}, label), el("dd", {"data-field": field}, value === null || value === undefined ? "–" : value)]));
  }

  function sessionPage() {
    const id = body.dataset.sessionId;
    enlargeOnClick();
    const state = {offset: 0, limit: 50, sort: "movie_number", order: "desc", status: "all", selected: null,
      series: null};
    const charts = {};
    const histograms = {};
    const drawn = {};  // chart id -> JSON of its data, to skip redrawing what did not change
    let metrics = null;
    let refreshNow = null;

    function setData(chart, chartId, data, lines) {
      const key = JSON.stringify([data, lines || []]);
      if (drawn[chartId] === key) return;
      drawn[chartId] = key;
      chart.lines = lines || [];
      chart.setData(data);
      chart.root.parentNode.dataset.points = data[0].length;
    }

    function drawCharts(detail) {
      const byKey = Object.fromEntries(detail.metrics.map((m) => [m.key, m]));
      for (const spec of TIME_CHARTS) {
        const first = byKey[spec.keys[0]];
        if (!charts[spec.id]) {
          charts[spec.id] = timeChart(document.getElementById("plots"), spec.id, spec.title || first.label,
            first.unit, spec.keys.map((k) => byKey[k].label));
        }
        setData(charts[spec.id], spec.id, merged(spec.keys.map((k) => detail.series[k])),
          limitLines(detail.limits[spec.keys[0]], first.unit));
      }
      for (const metric of detail.metrics) {
        if (!histograms[metric.key]) histograms[metric.key] = histogramChart(document.getElementById("histograms"), metric);
        const hist = detail.histograms[metric.key];
        histograms[metric.key].edges = hist.edges;
        setData(histograms[metric.key], `h-${metric.key}`, [hist.edges.slice(0, -1), hist.counts],
          limitLines(detail.limits[metric.key], metric.unit));
      }
      const limited = detail.metrics.filter((m) => detail.limits[m.key]);
      document.getElementById("limits-section").hidden = limited.length === 0;
      renderIfChanged(document.querySelector("#limits tbody"), [detail.limits, detail.beyond_limits], () => limited.map((m) => {
        const limit = detail.limits[m.key];
        const range = `${limit.low !== null ? limit.low : "–"} … ${limit.high !== null ? limit.high : "–"}`;
        return el("tr", {"data-metric": m.key}, el("td", {}, withUnit(m.label, m.unit)),
          el("td", {"data-field": "range", class: "num"}, range),
          el("td", {"data-field": "beyond", class: detail.beyond_limits[m.key] ? "num beyond" : "num"}, detail.beyond_limits[m.key]),
          el("td", {"data-field": "of", class: "num"}, detail.series[m.key].count));
      }));
    }

    function movieHeader() {
      const columns = [
        {key: "movie_number", label: "#", sortable: true, num: true},
        {key: "movie", label: "Movie"},
        {key: "acquired", label: "Acquired (UTC)", sortable: true},
        {key: "status", label: "Status", sortable: true},
        ...metrics.map((m) => ({key: m.key, label: withUnit(m.label, m.unit), sortable: true, num: true})),
        {key: "failure_reason", label: "Failure reason"},
      ];
      const row = document.querySelector("#movies thead tr");
      row.replaceChildren(...columns.map((c) => {
        const th = el("th", {"data-sort": c.sortable ? c.key : null, class: [c.sortable ? "sortable" : "", c.num ? "num" : "",
          state.sort === c.key ? `sorted-${state.order}` : ""].join(" ").trim() || null}, c.label);
        if (c.sortable) {
          th.addEventListener("click", () => {
            state.order = state.sort === c.key && state.order === "desc" ? "asc" : "desc";
            state.sort = c.key;
            state.offset = 0;
            movieHeader();
            refreshNow();
          });
        }
        return th;
      }));
    }

    function movieRow(movie) {
      const cells = [
        el("td", {"data-field": "movie_number", class: "num"}, movie.movie_number),
        el("td", {"data-field": "movie"}, movie.movie),
        el("td", {"data-field": "acquired"}, utc(movie.acquired)),
        el("td", {"data-field": "status"}, movie.status),
        ...metrics.map((m) => el("td", {"data-field": m.key, class: "num"}, fmt(movie[m.key], m.decimals))),
        el("td", {"data-field": "failure_reason", class: "reason"}, movie.failure_reason || ""),
      ];
      const selected = state.selected && state.selected.movie_id === movie.movie_id;
      const tr = el("tr", {"data-movie-id": movie.movie_id, class: ["clickable", movie.status === "failed" ? "failed" : "",
        selected ? "selected" : ""].join(" ").trim()}, ...cells);
      tr.addEventListener("click", () => {
        state.selected = movie;
        document.querySelectorAll("#movies tbody tr.selected").forEach((r) => r.classList.remove("selected"));
        tr.classList.add("selected");
        showSelected();
      });
      return tr;
    }

    function showSelected() {
      const section = document.getElementById("selected");
      section.hidden = !state.selected;
      if (!state.selected) return;
      document.getElementById("selected-name").textContent = state.selected.movie;
      thumbs(document.getElementById("selected-thumbs"), state.selected, THUMBS, (m) => m.images);
    }

    function drawTomography(detail) {
      const section = document.getElementById("tomography");
      section.hidden = detail.tilt_series.length === 0;
      if (section.hidden) return;
      const shown = detail.tilt_series.find((s) => s.tilt_series_id === state.series)
        || detail.tilt_series.find((s) => s.tomogram) || detail.tilt_series[0];
      renderIfChanged(document.querySelector("#series tbody"), [detail.tilt_series, shown.tilt_series_id], () => detail.tilt_series.map((s) => {
        const tr = el("tr", {"data-series-id": s.tilt_series_id, class: s === shown ? "clickable selected" : "clickable"},
          el("td", {"data-field": "name"}, s.name),
          el("td", {"data-field": "status", class: "reason"}, s.completed_reason ? `${s.status} (${s.completed_reason})` : s.status),
          el("td", {"data-field": "tilts", class: "num"}, s.tilts),
          el("td", {"data-field": "expected_tilts", class: "num"}, s.expected_tilts ?? "–"),
          el("td", {"data-field": "excluded_tilts", class: "num"}, s.excluded_tilts),
          el("td", {"data-field": "late_tilts", class: "num"}, s.late_tilts),
          el("td", {"data-field": "residual_mean", class: "num"}, fmt(s.tomogram && s.tomogram.residual_error_mean_px, 2)),
          el("td", {"data-field": "residual_sd", class: "num"}, fmt(s.tomogram && s.tomogram.residual_error_sd_px, 2)),
          el("td", {"data-field": "images"}, s.tomogram ? Object.keys(s.tomogram.images).length : 0));
        tr.addEventListener("click", () => { state.series = s.tilt_series_id; drawTomography(detail); });
        return tr;
      }));
      if (!charts.residuals) {
        const holder = el("div", {class: "plot", id: "plot-residuals"});
        document.getElementById("residual-plot").append(holder);
        charts.residuals = new uPlot({
          title: "Alignment residual", width: 460, height: 230, scales: {x: {time: false}},
          series: [{label: "Tilt angle (°)"}, {label: "Residual (px)", stroke: COLORS[0], width: 1,
            points: {show: true, size: 5, fill: COLORS[0]}}],
          axes: [{label: "Tilt angle (°)"}, {label: "Residual (px)", size: 60}],
        }, [[], []], holder);
      }
      const residuals = ((shown.tomogram && shown.tomogram.residuals) || [])
        .filter((r) => r.tilt_angle_deg !== null && r.residual_error_px !== null)
        .sort((a, b) => a.tilt_angle_deg - b.tilt_angle_deg);
      setData(charts.residuals, "residuals", [residuals.map((r) => r.tilt_angle_deg), residuals.map((r) => r.residual_error_px)]);
      thumbs(document.getElementById("series-thumbs"), shown.tomogram, TOMO_THUMBS, (t) => t.images);
    }

    // A class's picture and numbers; the selected ones (2D: by the automatic selection, 3D: the best
    // class, taken to refinement) are marked.
    function classFigure(c, kind) {
      const caption = [el("span", {"data-field": "class_number"}, `#${c.class_number}`),
        el("span", {"data-field": "particles"}, `${c.particles} ptcl (${fmt(100 * c.distribution, 1)} %)`)];
      if (c.score !== null) caption.push(el("span", {"data-field": "score"}, `score ${fmt(c.score, 2)}`));
      if (c.resolution_a !== null) caption.push(el("span", {"data-field": "resolution_a"}, `${fmt(c.resolution_a, 1)} Å`));
      if (c.selected) caption.push(el("span", {class: "tick", title: "selected"}, "✓ selected"));
      return el("figure", {"data-class": c.class_number, "data-selected": c.selected ? "true" : "false",
        class: c.selected ? "cls selected" : "cls"},
      c.image_id !== null ? el("img", {src: `${api}/images/${kind}/${c.image_id}`, alt: `Class ${c.class_number}`, loading: "lazy"})
        : el("div", {class: "noimg"}, "no image"), el("figcaption", {}, ...caption));
    }
    // Batches newest first, each folded; the newest open, and what a reader opened stays open.
    function batches(container, list, kind, summary) {
      renderIfChanged(container, list, () => {
        const open = new Set([...container.querySelectorAll("details[open]")].map((d) => d.dataset.groupId));
        return list.map((b, index) => el("details", {"data-group-id": b.group_id,
          open: open.size ? open.has(String(b.group_id)) : index === 0},
        el("summary", {}, summary(b)), el("div", {class: "gallery"}, ...b.classes.map((c) => classFigure(c, kind)))));
      });
    }
    function xyChart(holderId, parent, options) {
      const holder = el("div", {class: "plot", id: holderId});
      parent.append(holder);
      return new uPlot(options, options.series.map(() => []), holder);
    }

    function drawParticles(detail) {
      const s2 = document.getElementById("classes2d-section");
      s2.hidden = detail.classes_2d.length === 0;
      batches(document.getElementById("classes2d"), detail.classes_2d, "class2d", (b) =>
        `Batch ${b.batch_number} · ${b.particles} particles · ${b.classes.filter((c) => c.selected).length} of ` +
        `${b.classes.length} classes selected${b.reprocess ? " · reprocess" : ""} · ${b.run_id}`);
      const s3 = document.getElementById("map-section");
      s3.hidden = detail.classes_3d.length === 0 && detail.refinements.length === 0 && !detail.bfactor;
      if (s3.hidden) return;
      batches(document.getElementById("classes3d"), detail.classes_3d, "class3d", (b) =>
        `Batch ${b.batch_number} · ${b.particles} particles · initial model ` +
        `${b.initial_model_resolution_a !== null ? fmt(b.initial_model_resolution_a, 1) + " Å" : "–"}` +
        `${b.reprocess ? " · reprocess" : ""} · ${b.run_id}`);
      renderIfChanged(document.querySelector("#refinements tbody"), detail.refinements, () => detail.refinements.map((r) =>
        el("tr", {"data-refinement-id": r.refinement_id},
          el("td", {"data-field": "run_id"}, r.run_id), el("td", {"data-field": "symmetry"}, r.symmetry),
          el("td", {"data-field": "class_number", class: "num"}, r.class_number ?? "–"),
          el("td", {"data-field": "particles", class: "num"}, r.particles),
          el("td", {"data-field": "resolution_a", class: "num"}, fmt(r.resolution_a, 2)),
          el("td", {"data-field": "bfactor_a2", class: "num"}, fmt(r.bfactor_a2, 0)),
          el("td", {"data-field": "fsc"}, r.fsc ? `${r.fsc.frequency_inv_a.length} shells` : r.fsc_problem))));
      const plots = document.getElementById("map-plots");
      const withFsc = detail.refinements.find((r) => r.fsc);
      if (withFsc) {
        if (!charts.fsc) {
          charts.fsc = xyChart("plot-fsc", plots, {
            title: "Fourier shell correlation", width: 460, height: 260, plugins: [linesPlugin("y")],
            scales: {x: {time: false}, y: {range: [-0.1, 1.05]}},
            series: [{label: "Resolution (Å)", value: (u, f) => (f > 0 ? `${fmt(1 / f, 2)} Å` : "–")},
              {label: "Corrected", stroke: COLORS[0], width: 2},
              {label: "Unmasked", stroke: COLORS[1], width: 1},
              {label: "Masked", stroke: COLORS[2], width: 1}],
            axes: [{label: "Resolution (Å)", values: (u, ticks) => ticks.map((f) => (f > 0 ? fmt(1 / f, 1) : "∞"))},
              {label: "FSC", size: 50}],
          });
        }
        const f = withFsc.fsc;
        charts.fsc.root.querySelector(".u-title").textContent =
          `Fourier shell correlation · ${fmt(withFsc.resolution_a, 2)} Å at 0.143 · ${withFsc.run_id}`;
        setData(charts.fsc, "fsc", [f.frequency_inv_a, f.corrected, f.unmasked || f.corrected.map(() => null),
          f.masked || f.corrected.map(() => null)], [{value: 0.143, label: "0.143"}]);
      }
      const b = detail.bfactor;
      if (b) {
        if (!charts.bfactor) {
          charts.bfactor = xyChart("plot-bfactor", plots, {
            title: "B-factor", width: 460, height: 260, scales: {x: {time: false}},
            series: [{label: "Particles", value: (u, x) => (x === null ? "–" : Math.round(Math.exp(x)))},
              {label: "1/d² (Å⁻²)", stroke: COLORS[0], paths: () => null, points: {show: true, size: 7, fill: COLORS[0]},
                value: (u, v) => (v === null ? "–" : v.toFixed(4))},
              {label: "Fit", stroke: COLORS[1], width: 1, points: {show: false}}],
            axes: [{label: "Particles (log scale)", splits: (u) => u.data[0],  // a tick at each refined subset
              values: (u, ticks) => ticks.map((x) => Math.round(Math.exp(x)))},
              {label: "1/d² (Å⁻²)", size: 70, values: (u, ticks) => ticks.map((v) => v.toFixed(3))}],
          });
        }
        const x = b.particles.map((n) => Math.log(n));
        const fit = b.slope_per_a2 !== null ? x.map((v) => b.slope_per_a2 * v + b.intercept_per_a2) : x.map(() => null);
        charts.bfactor.root.querySelector(".u-title").textContent =
          `B-factor (Rosenthal–Henderson) · B = ${b.bfactor_a2 !== null ? fmt(b.bfactor_a2, 0) + " Å²" : "–"}`;
        setData(charts.bfactor, "bfactor", [x, b.resolution_a.map((d) => 1 / (d * d)), fit]);
      }
    }

    // Shown (by the server) only to users who may run the session's DAGs; the server checks again.
    const endButton = document.getElementById("end-session");
    if (endButton) {
      endButton.addEventListener("click", async () => {
        if (!window.confirm("End this session now? Movies not yet taken will not be processed.")) return;
        const status = document.getElementById("end-session-status");
        const response = await fetch(`${api}/sessions/${id}/stop`, {method: "POST", credentials: "same-origin",
          headers: {Accept: "application/json", "X-Cryoem-Request": "stop"}});
        let answer = {};
        try { answer = await response.json(); } catch (ignored) { /* not JSON */ }
        status.textContent = response.ok ? `Stop requested: ${answer.detail}` : `${response.status}: ${answer.detail}`;
        endButton.disabled = response.ok;
      });
    }

    function render(detail) {
      const s = detail.session;
      const summary = detail.summary;
      document.getElementById("session-name").textContent = s.name;
      document.title = `${s.name} · Cryo-EM`;
      const badge = document.getElementById("state");
      badge.textContent = s.state;
      badge.className = `badge ${s.state}`;
      const endButton = document.getElementById("end-session");
      if (endButton) endButton.hidden = s.state !== "live";
      const run = document.getElementById("dag-run");
      if (s.latest_run) run.replaceWith(Object.assign(runLink(s.latest_run), {id: "dag-run"}));
      facts(document.getElementById("facts"), [
        ["experiment", "Experiment", s.experiment], ["recipes", "Recipe", s.recipes.join(", ")],
        ["image_directory", "Watched folder", s.image_directory], ["started", "Started (UTC)", utc(s.started)],
        ["ended", "Ended (UTC)", utc(s.ended)], ["end_reason", "End reason", s.end_reason],
        ["files_claimed", "Files claimed", s.files_claimed], ["movies", "Movies", s.movies],
        ["failed", "Failed movies", s.failed], ["last_activity", "Last activity (UTC)", utc(s.last_activity)],
      ]);
      renderIfChanged(document.querySelector("#stages tbody"), summary.stages, () => Object.entries(summary.stages).map(
        ([stage, count]) => el("tr", {"data-stage": stage}, el("td", {}, STAGE_LABELS[stage] || stage),
          el("td", {"data-field": "succeeded", class: "num"}, count.succeeded),
          el("td", {"data-field": "failed", class: "num"}, count.failed))));
      facts(document.getElementById("medians"), [
        ["median_total_motion_a", "Median total motion (Å)", fmt(summary.median_total_motion_a, 2)],
        ["median_defocus_a", "Median defocus (Å)", fmt(summary.median_defocus_a, 0)],
        ["median_fit_resolution_a", "Median CTF fit resolution (Å)", fmt(summary.median_fit_resolution_a, 2)],
        ["median_particles_per_micrograph", "Median particles per micrograph", fmt(summary.median_particles_per_micrograph, 1)],
        ["best_resolution_a", "Best map resolution (Å)", fmt(summary.best_resolution_a, 2)],
        ["bfactor_a2", "B-factor (Å²)", fmt(summary.bfactor_a2, 0)],
      ]);
      const failures = document.getElementById("job-failures");
      failures.hidden = summary.failures.length === 0;
      renderIfChanged(failures.querySelector("ul"), summary.failures, () => summary.failures.map((f) => el("li", {}, `${f.stage}: ${f.reason}`)));
      document.getElementById("newest-name").textContent = detail.newest_movie ? detail.newest_movie.movie : "";
      thumbs(document.getElementById("newest-thumbs"), detail.newest_movie, THUMBS, (m) => m.images);
      drawCharts(detail);
      drawParticles(detail);
      drawTomography(detail);
      if (!metrics) {
        metrics = detail.metrics;
        movieHeader();
      }
      renderIfChanged(document.querySelector("#movies tbody"), [detail.movies, state.selected && state.selected.movie_id],
        () => detail.movies.movies.map(movieRow));
      pager(document.getElementById("movie-pager"), detail.movies, (offset) => { state.offset = offset; refreshNow(); });
      showSelected();
      // Milliseconds from navigation to the first complete page (benchmarks/bench_dashboard.py reads it).
      if (!body.dataset.firstRenderMs) body.dataset.firstRenderMs = Math.round(performance.now());
    }

    document.getElementById("failed-only").addEventListener("change", (event) => {
      state.status = event.target.checked ? "failed" : "all";
      state.offset = 0;
      refreshNow();
    });
    refreshNow = poll(async (current) => {
      const query = new URLSearchParams({offset: state.offset, limit: state.limit, sort: state.sort,
        order: state.order, status: state.status});
      const detail = await getJSON(`/sessions/${id}?${query}`);
      if (current()) render(detail);
    });
  }

  if (body.dataset.page === "sessions") sessionsPage();
  if (body.dataset.page === "session") sessionPage();
})();

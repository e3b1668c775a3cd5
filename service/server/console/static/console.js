// The riskgate console: five views over the service's JSON endpoints, charts drawn as SVG here.
// Every text from the server goes into the page as text (textContent), never as markup; nothing is
// loaded from anywhere but this service.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const KINDS = ["card_opening", "sim_sale", "transfer", "closure"];
  const KIND_NAMES = { card_opening: "开户 card opening", sim_sale: "售卡 SIM sale", transfer: "转账 transfer", closure: "销户 closure" };
  const KIND_COLOURS = { card_opening: "#2e86c1", sim_sale: "#8e44ad", transfer: "#d35400", closure: "#7f8c8d" };
  const OUTCOME_NAMES = { allow: "放行 allow", warn: "提醒 warn", block: "拦截 block" };
  const OUTCOME_COLOURS = { allow: "#7dcea0", warn: "#e0a526", block: "#c0392b" };
  const COMPONENT_NAMES = { redis: "Redis 风险数据", rules: "rules 规则文件", breakers: "breakers 规则熔断" };
  const REFRESH_MS = 15000;
  const state = { me: null, view: null, timer: null, before: null, catalogue: [] };

  // --- small helpers -------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    return node;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
  const $ = (id) => document.getElementById(id);
  const fmt = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"));
  const pct = (x, digits) => (x === null || x === undefined ? "—" : (x * 100).toFixed(digits === undefined ? 1 : digits) + "%");
  const hhmm = (iso) => (iso ? iso.slice(11, 16) : "");
  const stamp = (iso) => (iso ? iso.slice(0, 10) + " " + iso.slice(11, 19) : "");

  function banner(text, kind) {
    const node = $("banner");
    if (!text) { node.hidden = true; node.textContent = ""; return; }
    node.hidden = false;
    node.className = "banner " + (kind || "bad");
    node.textContent = text;
  }

  async function api(path, options) {
    const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
    if (response.status === 401) {
      window.location.assign("/login");
      throw new Error("unauthenticated");
    }
    const body = await response.json().catch(() => ({ message: "the console answered " + response.status }));
    if (response.status === 503) {
      banner(body.message || "Redis unavailable 风险数据库不可用");
      throw new Error(body.message);
    }
    if (!response.ok) {
      const error = new Error(body.message || String(response.status));
      error.status = response.status;
      error.body = body;
      throw error;
    }
    banner("");
    return body;
  }

  function table(node, headers, rows, numericFrom) {
    clear(node);
    const start = numericFrom === undefined ? 1 : numericFrom;
    const head = el("tr", {}, ...headers.map((h, i) => el("th", { class: i >= start ? "num" : null, text: h })));
    node.append(el("thead", {}, head));
    const body = el("tbody");
    for (const row of rows) {
      const attrs = row.attrs || {};
      const cells = row.cells || row;
      body.append(el("tr", attrs, ...cells.map((c, i) => el("td", { class: i >= start ? "num" : null }, c))));
    }
    if (!rows.length) body.append(el("tr", {}, el("td", { colspan: headers.length, class: "muted", text: "none 无" })));
    node.append(body);
    return node;
  }

  function legend(node, entries) {
    clear(node);
    for (const [name, colour] of entries) {
      const swatch = el("i");
      swatch.style.background = colour;
      node.append(el("span", {}, swatch, name));
    }
  }

  // A stacked bar chart: points [{label, values: {key: n}}], keys in stacking order.
  function stackedBars(container, points, keys, colours, options) {
    clear(container);
    const width = (options && options.width) || 720, height = (options && options.height) || 220;
    const left = 48, right = 8, top = 8, bottom = 24;
    const plotW = width - left - right, plotH = height - top - bottom;
    const totals = points.map((p) => keys.reduce((s, k) => s + (p.values[k] || 0), 0));
    const max = Math.max(1, ...totals);
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", class: "bars" });
    for (let i = 0; i <= 4; i++) {
      const y = top + plotH - (plotH * i) / 4;
      chart.append(svg("line", { x1: left, x2: width - right, y1: y, y2: y, class: "grid" }));
      const label = svg("text", { x: left - 6, y: y + 4, "text-anchor": "end" });
      label.textContent = fmt(Math.round((max * i) / 4));
      chart.append(label);
    }
    const step = plotW / Math.max(1, points.length);
    const barW = Math.max(1, step * 0.85);
    points.forEach((p, i) => {
      let y = top + plotH;
      for (const k of keys) {
        const v = p.values[k] || 0;
        if (!v) continue;
        const h = (plotH * v) / max;
        y -= h;
        const bar = svg("rect", { x: left + i * step, y: y, width: barW, height: Math.max(h, 0.5), fill: colours[k], class: "bar", "data-key": k });
        const tip = svg("title");
        tip.textContent = `${p.label} ${k}: ${fmt(v)}`;
        bar.append(tip);
        chart.append(bar);
      }
    });
    const every = Math.max(1, Math.ceil(points.length / 8));
    points.forEach((p, i) => {
      if (i % every) return;
      const t = svg("text", { x: left + i * step, y: height - 6 });
      t.textContent = p.label;
      chart.append(t);
    });
    chart.append(svg("line", { x1: left, x2: width - right, y1: top + plotH, y2: top + plotH, class: "axis" }));
    container.append(chart);
  }

  function sparkline(values, shadow) {
    const width = 160, height = 28;
    const max = Math.max(1, ...values, ...(shadow || []));
    const line = (vs) => vs.map((v, i) => `${(i * width) / Math.max(1, vs.length - 1)},${height - 2 - ((height - 4) * v) / max}`).join(" ");
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "spark", role: "img" });
    if (shadow && shadow.some((v) => v)) chart.append(svg("polyline", { points: line(shadow), class: "spark-shadow" }));
    chart.append(svg("polyline", { points: line(values), class: "spark-fires" }));
    return chart;
  }

  function hbars(container, rows) {
    clear(container);
    const width = 520, rowH = 20, left = 150;
    const shown = rows.slice(0, 12);
    const height = Math.max(rowH, shown.length * rowH) + 4;
    const max = Math.max(1, ...shown.map((r) => r.warn + r.block));
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "hbars", role: "img" });
    shown.forEach((r, i) => {
      const y = i * rowH + 2;
      const name = svg("text", { x: left - 6, y: y + 14, "text-anchor": "end" });
      name.textContent = r.label;
      chart.append(name);
      let x = left;
      for (const k of ["warn", "block"]) {
        const w = ((width - left - 60) * r[k]) / max;
        if (w > 0) chart.append(svg("rect", { x: x, y: y + 3, width: w, height: rowH - 6, fill: OUTCOME_COLOURS[k], class: "bar" }));
        x += w;
      }
      const n = svg("text", { x: x + 4, y: y + 14 });
      n.textContent = fmt(r.warn + r.block);
      chart.append(n);
    });
    container.append(chart);
  }

  function tile(label, value, extra, kind) {
    return el("div", { class: "tile" + (kind ? " " + kind : "") }, el("div", { class: "tile-label", text: label }),
      el("div", { class: "tile-value", text: value }), extra ? el("div", { class: "tile-extra muted", text: extra }) : null);
  }

  function updated(id, iso) { $(id).textContent = "updated 更新于 " + stamp(iso); }

  // --- Now ------------------------------------------------------------------------------------

  async function showNow() {
    const doc = await api("/api/now?hours=" + encodeURIComponent($("now-hours").value));
    updated("now-updated", doc.generated_at);
    const t = doc.totals, status = doc.status;
    const tiles = clear($("now-tiles"));
    tiles.append(
      tile("decisions / min 每分钟决策", fmt(Math.round(doc.per_minute * 10) / 10), "last minute 最近一分钟 " + fmt(doc.last_minute.total)),
      tile("decisions 决策", fmt(t.total), (doc.span_minutes / 60).toFixed(0) + " h"),
      tile("warn 提醒", fmt(t.warn), pct(t.total ? t.warn / t.total : null, 2), "warn"),
      tile("block 拦截", fmt(t.block), pct(t.total ? t.block / t.total : null, 2), "block"),
      tile("degraded 降级", pct(t.degraded_share, 2), fmt(t.degraded) + " decisions", t.degraded ? "bad" : ""),
      tile("ruleset revision 规则版本", status.revision, "reloads 重载: " + fmt(status.reloads.loaded || 0) + " loaded, " + fmt(status.reloads.rejected || 0) + " rejected", status.rule_errors.length ? "bad revision" : "revision"),
    );
    $("now-bucket").textContent = doc.bucket_minutes > 1 ? ` (${doc.bucket_minutes} min per bar 每柱${doc.bucket_minutes}分钟)` : "";
    legend($("now-legend"), ["allow", "warn", "block"].map((k) => [OUTCOME_NAMES[k], OUTCOME_COLOURS[k]]));
    stackedBars($("now-chart"), doc.series.map((p) => ({ label: hhmm(p.t), values: p })), ["allow", "warn", "block"], OUTCOME_COLOURS);
    legend($("now-kind-legend"), KINDS.map((k) => [KIND_NAMES[k], KIND_COLOURS[k]]));
    stackedBars($("now-kind-chart"), doc.series.map((p) => ({ label: hhmm(p.t), values: p.flagged_by_kind })), KINDS, KIND_COLOURS);
    const health = clear($("now-health"));
    const list = el("ul", { class: "health" });
    list.append(el("li", { class: status.serving ? "ok" : "bad" }, el("b", { text: "service 服务" }), status.serving ? " SERVING" : " NOT SERVING"));
    for (const [name, ok] of Object.entries(status.components)) {
      list.append(el("li", { class: ok ? "ok" : "bad", "data-component": name }, el("b", { text: COMPONENT_NAMES[name] || name }), ok ? " SERVING" : " NOT SERVING"));
    }
    list.append(el("li", { class: status.redis_breaker_open ? "bad" : "ok" }, el("b", { text: "Redis circuit breaker 熔断器" }), status.redis_breaker_open ? " open 打开" : " closed 正常"));
    list.append(el("li", { class: status.unwritten_log_entries ? "bad" : "ok" }, el("b", { text: "unwritten log entries 未写入日志" }), " " + fmt(status.unwritten_log_entries)));
    health.append(list);
    if (status.demoted.length) {
      health.append(el("p", { class: "demoted-note" }, el("b", { text: "Demoted by their breakers 熔断降级为影子: " }), status.demoted.join(", ")));
    }
    const revisions = Object.entries(doc.revisions);
    if (revisions.length) health.append(el("p", { class: "muted", text: "decided by revision 各版本决策: " + revisions.map(([r, n]) => `${r} ${fmt(n)}`).join(", ") }));
    if (status.replica) health.append(el("p", { class: "muted", text: "replica 副本: " + status.replica }));
    table($("now-kinds"), ["kind 业务", "decisions 决策", "warn 提醒", "block 拦截", "degraded 降级"],
      doc.by_kind.map((k) => ({ attrs: { "data-kind": k.kind }, cells: [k.name, fmt(k.total), fmt(k.warn), fmt(k.block), fmt(k.degraded)] })));
  }

  // --- Rules ----------------------------------------------------------------------------------

  function mix(dispositions) {
    const box = el("span", { class: "mix" });
    for (const [value, count] of Object.entries(dispositions)) {
      const known = state.catalogue.find((d) => d.value === value);
      box.append(el("span", { class: "chip " + (known ? known.label : ""), title: value }, (known ? known.zh : value) + " " + fmt(count)));
    }
    return box;
  }

  async function showRules() {
    const doc = await api(`/api/rules?hours=${encodeURIComponent($("rules-hours").value)}&days=${encodeURIComponent($("rules-days").value)}`);
    updated("rules-updated", doc.generated_at);
    const rows = doc.rules.map((r) => ({
      attrs: { "data-rule": r.rule_id, class: r.demoted ? "demoted" : r.mode === "shadow" ? "shadow" : null },
      cells: [
        el("span", {}, el("code", { text: r.rule_id }), r.demoted ? el("span", { class: "badge bad", text: "demoted by breaker 熔断降级" }) : null,
          r.mode === "shadow" ? el("span", { class: "badge", text: "shadow 影子" }) : null, r.served ? null : el("span", { class: "badge", text: "not served 未加载" })),
        r.outcome ? OUTCOME_NAMES[r.outcome] || r.outcome : "—",
        fmt(r.fires), fmt(r.shadow_fires), pct(r.share, 2), sparkline(r.fires_series, r.shadow_series),
        mix(r.dispositions),
        el("span", { class: "precision" }, r.precision === null ? "—" : `${pct(r.precision)} (n=${r.positives + r.negatives})`),
      ],
    }));
    table($("rules-table"), ["rule 规则", "outcome 结果", "fires 触发", "shadow 影子", "share 占比", "over time 趋势", "dispositions 处置", "precision 精确率"], rows, 2);
    const ids = clear($("rule-ids"));
    for (const r of doc.rules) ids.append(el("option", { value: r.rule_id }));
  }

  // --- Warnings -------------------------------------------------------------------------------

  function filterQuery() {
    const params = new URLSearchParams();
    for (const name of ["institution", "outlet", "region", "rule", "disposition"]) {
      const value = $("f-" + name).value.trim();
      if (value) params.set(name, value);
    }
    return params;
  }

  function dispositionText(d) { return d ? `${d.zh} ${d.en}` : "none yet 未处置"; }

  function recordForm(item, shown) {
    if (!state.me || !state.me.may_record_dispositions) return el("p", { class: "muted", text: "Recording a disposition needs dispositions.write 记录处置需要 dispositions.write 权限" });
    const select = el("select", { name: "disposition", class: "record-disposition", "aria-label": "disposition 处置" });
    for (const d of state.catalogue) select.append(el("option", { value: d.value, text: `${d.zh} ${d.en}` }));
    const note = el("input", { name: "note", class: "record-note", maxlength: 512, placeholder: "note: a case or notice number, never an ID or phone number 备注", size: 40 });
    const message = el("span", { class: "record-message", role: "status" });
    const button = el("button", { type: "submit", class: "record-button", text: "Record 记录处置" });
    const form = el("form", { class: "record" }, select, note, button, message);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      button.disabled = true;
      message.textContent = "";
      try {
        const record = await api("/api/dispositions", {
          method: "POST",
          headers: { "Content-Type": "application/json", "X-Riskgate-Console": "1" },
          body: JSON.stringify({ decision_id: item.decision_id, disposition: select.value, note: note.value }),
        });
        shown.textContent = dispositionText(record.disposition);
        shown.className = "current " + record.disposition.label;
        message.className = "record-message ok";
        message.textContent = (record.already_recorded ? "already recorded 已记录过 " : "recorded 已记录 ") + stamp(record.reported_at) + " · " + record.reported_by;
      } catch (error) {
        message.className = "record-message bad";
        message.textContent = "refused 拒绝: " + error.message;
      } finally {
        button.disabled = false;
      }
    });
    return form;
  }

  function flaggedCard(item) {
    const shown = el("span", { class: "current " + (item.disposition ? item.disposition.label : "none") }, dispositionText(item.disposition));
    const reasons = el("ul", { class: "reasons" });
    for (const r of item.reasons) {
      const evidence = r.evidence.length ? el("dl", { class: "evidence" }, ...r.evidence.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })])) : null;
      reasons.append(el("li", { class: r.shadow ? "shadow" : "" },
        el("code", { text: r.rule_id }), " ", el("span", { class: "badge " + r.outcome, text: (OUTCOME_NAMES[r.outcome] || r.outcome) + (r.shadow ? " · shadow 影子" : "") }),
        el("div", { class: "zh", text: r.message_zh }), el("div", { class: "en muted", text: r.message_en }), evidence));
    }
    return el("article", { class: "flagged " + item.outcome, "data-decision": item.decision_id },
      el("header", {},
        el("span", { class: "badge " + item.outcome, text: OUTCOME_NAMES[item.outcome] || item.outcome }),
        el("span", { class: "when", text: stamp(item.decided_at) }),
        el("span", { class: "kind", text: item.kind_name }),
        el("span", { class: "where" }, "institution 机构 ", el("code", { text: item.institution_id }), " · outlet 网点 ", el("code", { text: item.outlet_id }),
          " · region 地区 ", el("code", { text: item.region_code }), " ", item.region_name),
        item.clerk ? el("span", { class: "clerk" }, "clerk 柜员 ", el("code", { text: item.clerk })) : null),
      reasons,
      el("footer", {}, el("span", { class: "ids muted" }, "decision ", el("code", { text: item.decision_id }), " · request ", el("code", { text: item.request_id })),
        el("span", { class: "disposition" }, "disposition 处置: ", shown), recordForm(item, shown)));
  }

  async function showWarnings(more) {
    const params = filterQuery();
    params.set("limit", "30");
    if (more && state.before) params.set("before", state.before);
    let doc;
    try {
      doc = await api("/api/flagged?" + params.toString());
    } catch (error) {
      if (error.status === 400) { $("warnings-summary").textContent = "filter refused 筛选无效: " + error.message; return; }
      throw error;
    }
    updated("warnings-updated", doc.generated_at);
    const list = $("flagged-list");
    if (!more) clear(list);
    for (const item of doc.items) list.append(flaggedCard(item));
    state.before = doc.next_before;
    $("flagged-more").hidden = !doc.next_before;
    const count = list.querySelectorAll("article.flagged").length;
    $("warnings-summary").textContent = `${fmt(count)} shown 显示 · ${fmt(doc.scanned)} looked at 已查看` + (count ? "" : " · none match 无匹配");
  }

  // --- Where ----------------------------------------------------------------------------------

  function burstRule(id, b, what) {
    $(id).textContent = `Unusual 异常: ${fmt(b.floor)}+ openings in the current or previous hour and at least ${b.factor}× the median ${what} per active hour over 24 h (${b.baseline.toFixed(1)}). ` +
      `当前或上一小时开户 ≥ ${b.floor} 且 ≥ 24小时中位数的 ${b.factor} 倍。`;
  }

  async function showWhere() {
    const day = $("where-day").value;
    const doc = await api("/api/where" + (day ? "?day=" + encodeURIComponent(day) : ""));
    updated("where-updated", doc.generated_at);
    hbars($("where-provinces-chart"), doc.provinces.filter((p) => p.warn + p.block).map((p) => ({ label: `${p.code} ${p.zh}`, warn: p.warn, block: p.block })));
    table($("where-provinces"), ["province 省份", "warn 提醒", "block 拦截", "decisions 决策"],
      doc.provinces.map((p) => ({ attrs: { "data-province": p.code }, cells: [`${p.code} ${p.zh} ${p.en}`, fmt(p.warn), fmt(p.block), fmt(p.total)] })));
    table($("where-cities"), ["region 地区", "warn 提醒", "block 拦截"],
      doc.cities.map((c) => ({ attrs: { "data-region": c.code }, cells: [el("span", {}, el("code", { text: c.code }), " ", c.name), fmt(c.warn), fmt(c.block)] })));
    burstRule("bursts-clerks-rule", doc.clerks, "clerk's openings");
    burstRule("bursts-outlets-rule", doc.outlet_bursts, "outlet's openings");
    const burstRows = (b) => b.rows.map((r) => ({ attrs: { class: r.unusual ? "unusual" : null }, cells: [el("span", {}, el("code", { text: r.ref }), r.unusual ? el("span", { class: "badge bad", text: "unusual 异常" }) : null), fmt(r.this_hour), fmt(r.previous_hour)] }));
    table($("where-clerks"), ["clerk 柜员 (ref)", "this hour 本小时", "previous 上一小时"], burstRows(doc.clerks));
    table($("where-outlet-bursts"), ["institution/outlet 机构/网点", "this hour 本小时", "previous 上一小时"], burstRows(doc.outlet_bursts));
    table($("where-outlets"), ["institution 机构", "outlet 网点", "warn 提醒", "block 拦截"],
      doc.outlets.map((o) => [el("code", { text: o.institution_id }), el("code", { text: o.outlet_id }), fmt(o.warn), fmt(o.block)]), 2);
  }

  // --- Daily report ---------------------------------------------------------------------------

  async function showReport() {
    const day = $("report-day").value || state.me.today;
    const doc = await api("/api/report?day=" + encodeURIComponent(day));
    $("report-csv").setAttribute("href", `/report/${doc.day}.csv`);
    $("report-print").setAttribute("href", `/report/${doc.day}.html`);
    const t = doc.totals;
    const tiles = clear($("report-tiles"));
    const disposed = doc.dispositions.reduce((s, d) => s + d.count, 0);
    tiles.append(tile("day 日期", doc.day), tile("decisions 决策", fmt(t.total)), tile("warn 提醒", fmt(t.warn), null, "warn"),
      tile("block 拦截", fmt(t.block), null, "block"), tile("degraded 降级", fmt(t.degraded)),
      tile("dispositions 处置", fmt(disposed), `positive ${fmt(doc.labels.positives)} · negative ${fmt(doc.labels.negatives)} · pending ${fmt(doc.labels.pending)}`));
    table($("report-volumes"), ["kind 业务", "decisions 决策", "warn 提醒", "block 拦截", "allow 放行", "degraded 降级"],
      doc.volumes.map((v) => [v.name, fmt(v.total), fmt(v.warn), fmt(v.block), fmt(v.allow), fmt(v.degraded)]));
    table($("report-dispositions"), ["disposition 处置", "count 数量"], doc.dispositions.map((d) => [`${d.zh} ${d.en}`, fmt(d.count)]));
    table($("report-rules"), ["rule 规则", "fires 触发", "shadow 影子", "precision 精确率"],
      doc.rules.map((r) => [el("code", { text: r.rule_id }), fmt(r.fires), fmt(r.shadow_fires), r.precision === null ? "—" : `${pct(r.precision)} (n=${r.positives + r.negatives})`]));
    table($("report-provinces"), ["province 省份", "warn 提醒", "block 拦截"], doc.provinces.map((p) => [`${p.code} ${p.zh}`, fmt(p.warn), fmt(p.block)]));
    table($("report-cities"), ["region 地区", "warn 提醒", "block 拦截"], doc.cities.map((c) => [`${c.code} ${c.name}`, fmt(c.warn), fmt(c.block)]));
    stackedBars($("report-hours"), doc.hours.map((h) => ({ label: h.hour, values: h })), ["warn", "block"], OUTCOME_COLOURS, { height: 180 });
  }

  // --- routing --------------------------------------------------------------------------------

  const VIEWS = { now: showNow, rules: showRules, warnings: () => showWarnings(false), where: showWhere, report: showReport };

  async function show(name) {
    if (!VIEWS[name]) name = "now";
    state.view = name;
    for (const section of document.querySelectorAll("section.view")) section.hidden = section.id !== "view-" + name;
    for (const link of document.querySelectorAll("#nav a")) link.classList.toggle("active", link.dataset.view === name);
    document.body.dataset.view = name;
    document.body.dataset.ready = "";
    try {
      await VIEWS[name]();
    } catch (error) {
      if (error.message !== "unauthenticated" && !$("banner").textContent) banner("The console could not load this view 无法加载: " + error.message);
    } finally {
      document.body.dataset.ready = name;
    }
    clearInterval(state.timer);
    if (name === "now") state.timer = setInterval(() => { if (!document.hidden) showNow().catch(() => {}); }, REFRESH_MS);
  }

  async function start() {
    try {
      state.me = await api("/api/me");
    } catch (error) {
      return;
    }
    state.catalogue = state.me.dispositions;
    $("principal").textContent = state.me.principal;
    const filter = $("f-disposition");
    for (const d of state.catalogue) filter.append(el("option", { value: d.value, text: `${d.zh} ${d.en}` }));
    $("where-day").value = state.me.today;
    $("report-day").value = state.me.today;
    $("logout").hidden = !state.me.session;
    $("logout").addEventListener("click", async () => {
      await fetch("/logout", { method: "POST", credentials: "same-origin", headers: { "X-Riskgate-Console": "1" } });
      window.location.assign("/login");
    });
    $("now-hours").addEventListener("change", () => show("now"));
    $("rules-hours").addEventListener("change", () => show("rules"));
    $("rules-days").addEventListener("change", () => show("rules"));
    $("where-day").addEventListener("change", () => show("where"));
    $("report-day").addEventListener("change", () => show("report"));
    $("filters").addEventListener("submit", (event) => { event.preventDefault(); show("warnings"); });
    $("filters").addEventListener("reset", () => setTimeout(() => show("warnings"), 0));
    $("flagged-more").addEventListener("click", () => showWarnings(true).catch(() => {}));
    window.addEventListener("hashchange", () => show(window.location.hash.slice(1)));
    await show(window.location.hash.slice(1) || "now");
  }

  document.addEventListener("DOMContentLoaded", start);
})();

// The experiments table: a virtualised grid (only the rows in view are in the page), so that
// 1,000 experiments scroll smoothly with no "load more". Python owns the data and the order
// (sorting and filtering happen there, over the whole table); this draws, and reports clicks:
// a header click sets `sort`, a row click toggles the row in `picked`.
const ROW_HEIGHT = 30;
const OVERSCAN = 10;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function download(name, data, mime) {
  const url = URL.createObjectURL(new Blob([data], { type: mime }));
  const link = el("a");
  link.href = url;
  link.download = name;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function render({ model, el: root }) {
  root.classList.add("xt");
  const scroller = el("div", "xt-scroll");
  const table = el("table", "xt-table");
  const thead = el("thead");
  const tbody = el("tbody");
  table.append(thead, tbody);
  scroller.appendChild(table);
  root.appendChild(scroller);

  function header() {
    const columns = model.get("header");
    const sort = model.get("sort") || {};
    const row = el("tr");
    row.appendChild(el("th", "xt-pick", "pick"));
    columns.forEach((column, position) => {
      const th = el("th", `xt-${column.group}` + (column.numeric ? " xt-num" : ""));
      if (position === 0) th.classList.add("xt-sticky"); // the name stays in view
      th.dataset.column = column.name;
      th.title = `${column.name} (${column.group}): click to sort`;
      let label = column.label;
      if (sort.column === column.name) label += sort.descending ? " ▼" : " ▲";
      th.textContent = label;
      th.addEventListener("click", () => {
        const current = model.get("sort") || {};
        const descending = current.column === column.name ? !current.descending : column.numeric;
        model.set("sort", { column: column.name, descending });
        model.save_changes();
      });
      row.appendChild(th);
    });
    thead.replaceChildren(row);
  }

  function body() {
    const cells = model.get("cells");
    const info = model.get("row_info");
    const order = model.get("order");
    const marks = model.get("marks");
    const picked = new Set(model.get("picked"));
    const colors = model.get("colors");
    const width = model.get("header").length + 1;
    const top = scroller.scrollTop;
    const first = Math.max(0, Math.floor(top / ROW_HEIGHT) - OVERSCAN);
    const visible = Math.ceil((scroller.clientHeight || 600) / ROW_HEIGHT) + 2 * OVERSCAN;
    const last = Math.min(order.length, first + visible);
    const rows = [];
    const spacer = (height) => {
      const tr = el("tr", "xt-spacer");
      const td = el("td");
      td.colSpan = width;
      td.style.height = `${height}px`;
      tr.appendChild(td);
      return tr;
    };
    if (first > 0) rows.push(spacer(first * ROW_HEIGHT));
    for (let position = first; position < last; position++) {
      const index = order[position];
      const meta = info[index];
      const tr = el("tr", `xt-row xt-${meta.kind} xt-state-${meta.state}`);
      tr.dataset.id = meta.id;
      tr.dataset.name = meta.name;
      if (picked.has(meta.id)) tr.classList.add("xt-picked");
      if (meta.error) tr.title = meta.error;
      const pick = el("td", "xt-pick");
      const box = el("input");
      box.type = "checkbox";
      box.checked = picked.has(meta.id);
      box.disabled = !meta.pickable;
      box.title = meta.pickable ? "compare this experiment" : "nothing to compare yet";
      pick.appendChild(box);
      if (colors[meta.id]) {
        const swatch = el("span", "xt-swatch");
        swatch.style.background = colors[meta.id];
        pick.appendChild(swatch);
      }
      tr.appendChild(pick);
      cells[index].forEach((text, column) => {
        const td = el("td", column === 0 ? "xt-sticky" : "", text);
        const interval = column > 0 && /^(\S+) (\[[^\]]*\])$/.exec(text);
        if (interval) {  // a key metric's 95 % interval, smaller, after its value
          td.textContent = `${interval[1]} `;
          td.appendChild(el("span", "xt-interval", interval[2]));
        }
        if (column === 0 && meta.thumb) {
          const image = el("img", "xt-thumb");
          image.src = meta.thumb;
          image.alt = "";
          td.prepend(image);
        }
        const mark = marks[`${index},${column}`];
        if (mark) td.classList.add(`xt-${mark}`);
        if (text.length > 24) td.title = text;
        tr.appendChild(td);
      });
      if (meta.pickable) tr.addEventListener("click", () => toggle(meta.id));
      rows.push(tr);
    }
    if (last < order.length) rows.push(spacer((order.length - last) * ROW_HEIGHT));
    if (order.length === 0) {
      const tr = el("tr", "xt-empty");
      const td = el("td", "", model.get("empty_text"));
      td.colSpan = width;
      tr.appendChild(td);
      rows.push(tr);
    }
    tbody.replaceChildren(...rows);
  }

  function toggle(id) {
    const picked = model.get("picked").slice();
    const at = picked.indexOf(id);
    if (at >= 0) picked.splice(at, 1);
    else picked.push(id);
    model.set("picked", picked);
    model.save_changes();
  }

  function sizeAndDraw() {
    scroller.style.maxHeight = `${model.get("height")}px`;
    header();
    body();
  }

  let frame = null;
  scroller.addEventListener("scroll", () => {
    if (frame === null) frame = requestAnimationFrame(() => { frame = null; body(); });
  });
  model.on("change:header", sizeAndDraw);
  model.on("change:sort", header);
  for (const name of ["cells", "row_info", "order", "marks", "picked", "colors", "empty_text"]) {
    model.on(`change:${name}`, body);
  }
  model.on("change:height", sizeAndDraw);
  model.on("msg:custom", (message, buffers) => {
    const file = message.download;
    if (file) download(file.name, file.text ?? buffers[0], file.mime);
  });
  sizeAndDraw();
  // Tell Python the table is on screen: the plots, slower to draw, wait for this.
  // Views are drawn detached first: wait until this one is in the page and painted.
  const announce = () => {
    const shown = root.checkVisibility
      ? root.checkVisibility({ visibilityProperty: true, opacityProperty: true })
      : root.offsetParent !== null;
    if (root.isConnected && shown) {
      requestAnimationFrame(() => setTimeout(() => model.send({ drawn: true }), 0));
    } else {
      setTimeout(announce, 50);
    }
  };
  announce();
}

export default { render };

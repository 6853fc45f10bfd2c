// The gallery: a row per prompt and seed, a column per picked experiment (and per base or
// LoRA), each column labelled with what the experiment changed and its key metric. A click on
// an image asks Python for the full-size file and shows it over the page; Escape or a click
// closes it.
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function render({ model, el: root }) {
  root.classList.add("gl");
  const overlay = el("div", "gl-overlay");
  const big = el("img", "gl-big");
  const caption = el("div", "gl-caption");
  overlay.append(big, caption);
  overlay.addEventListener("click", () => overlay.classList.remove("gl-open"));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") overlay.classList.remove("gl-open");
  });
  const grid = el("div", "gl-scroll");
  root.append(grid, overlay);

  function draw() {
    const columns = model.get("columns");
    const rows = model.get("rows");
    const size = model.get("thumb_size");
    if (!columns.length || !rows.length) {
      grid.replaceChildren(el("div", "gl-empty", model.get("empty_text")));
      return;
    }
    const table = el("table", "gl-table");
    const head = el("tr");
    head.appendChild(el("th", "gl-rowhead", ""));
    columns.forEach((column) => {
      const th = el("th", "gl-col");
      th.dataset.key = column.key;
      const label = el("div", "gl-label", column.label);
      if (column.color) label.style.borderBottom = `3px solid ${column.color}`;
      th.append(label, el("div", "gl-detail", column.detail || ""));
      head.appendChild(th);
    });
    table.appendChild(head);
    rows.forEach((row) => {
      const tr = el("tr");
      tr.appendChild(el("th", "gl-rowhead", row.label));
      row.cells.forEach((cell, index) => {
        const td = el("td", "gl-cell");
        if (cell.src) {
          const image = el("img", "gl-thumb");
          image.src = cell.src;
          image.alt = cell.title;
          image.title = `${cell.title} (click to enlarge)`;
          image.style.width = image.style.height = `${size}px`;
          image.dataset.key = cell.key;
          image.dataset.column = columns[index].key;
          image.addEventListener("click", () => {
            big.src = cell.src;
            caption.textContent = cell.title;
            overlay.classList.add("gl-open");
            model.send({ enlarge: cell.key });
          });
          td.appendChild(image);
        } else {
          const missing = el("div", "gl-missing", cell.text || "not available");
          missing.title = cell.missing || "";
          missing.style.width = missing.style.height = `${size}px`;
          td.appendChild(missing);
        }
        tr.appendChild(td);
      });
      table.appendChild(tr);
    });
    grid.replaceChildren(table);
  }

  model.on("msg:custom", (message) => {
    if (message.enlarged) big.src = message.enlarged.src;
  });
  for (const name of ["columns", "rows", "thumb_size", "empty_text"]) model.on(`change:${name}`, draw);
  draw();
}

export default { render };

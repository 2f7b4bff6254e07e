// Building bits of the page from code: every text goes in through textContent (never markup), and
// icons are inline SVG paths drawn for this site, hidden from assistive technology (the control
// that holds one carries the name).

const SVG = "http://www.w3.org/2000/svg";

/** A `tag` element with `className` and, when given, `text` as its text. */
export function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A 24×24 icon of one SVG path `d`. */
export function icon(d) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  const path = document.createElementNS(SVG, "path");
  path.setAttribute("d", d);
  svg.append(path);
  return svg;
}

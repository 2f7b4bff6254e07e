// The admin's transcript page shows each message's text as written, Markdown unrendered, so staff
// read exactly what was said; formulas are typeset all the same (math.js), outside code.

import { typesetText } from "./math.js";

for (const text of document.querySelectorAll(".transcript .text")) typesetText(text);

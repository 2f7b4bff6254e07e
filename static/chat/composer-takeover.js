// chat.js takes the composer over from composer-early.js, the classic script that holds an Enter
// pressed before this page's modules ran (see there).

/** Takes the composer over; true when an Enter pressed before asked for its text to be sent. */
export function takeOverComposer(form, input) {
  const asked = form.dataset.composer === "send";
  form.dataset.composer = "ready";
  input.readOnly = false;
  return asked;
}

// The message box before the chat page's modules run.
//
// chat.js is a module, so it runs only once the whole page is parsed and every module it imports
// has arrived; on a slow network or a busy device that is a noticeable moment after the message
// box appears. Until then the box is a plain textarea, which takes Enter as a line break: the
// message was then sent later with a stray newline, or not at all. And the composer is a form,
// whose native submission would put the text in the address.
//
// This classic script, in <head> (the CSP allows no inline script), listens on the document
// from before the box exists. Until chat.js takes the composer over (composer-takeover.js):
// Enter (not Shift+Enter, not while an input method composes) adds no line break; with text in
// the box it asks for the send, and the box is held read-only so that the text sent is the text
// seen. chat.js then sends it as if Enter had been pressed then. The hand-over is written on the
// form, `data-composer`: "send" once asked, "ready" once chat.js has the composer.

(function () {
  const FORM_ID = "composer";
  const INPUT_ID = "message-input";

  function waiting(form) {
    return form !== null && form.id === FORM_ID && form.dataset.composer !== "ready";
  }

  function askToSend(form, input) {
    if (!input.value.trim() || input.disabled) return;
    input.readOnly = true;
    form.dataset.composer = "send";
  }

  document.addEventListener(
    "keydown",
    function (event) {
      const input = event.target;
      if (!(input instanceof HTMLTextAreaElement) || input.id !== INPUT_ID || !waiting(input.form)) return;
      if (event.key !== "Enter" || event.shiftKey || event.isComposing) return;
      event.preventDefault();
      askToSend(input.form, input);
    },
    true,
  );

  document.addEventListener(
    "submit",
    function (event) {
      const form = event.target;
      if (!waiting(form)) return;
      event.preventDefault();
      const input = document.getElementById(INPUT_ID);
      if (input) askToSend(form, input);
    },
    true,
  );
})();

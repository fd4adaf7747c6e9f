// Chat page behaviour: Enter sends, Shift+Enter adds a line, the composer
// clears after its message went out over the WebSocket, and the message list
// follows the stream while the reader is at the bottom.
(function () {
  "use strict";
  document.addEventListener("keydown", function (event) {
    var box = event.target;
    if (!box.matches || !box.matches("textarea[data-enter-sends]")) return;
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (box.value.trim()) box.form.requestSubmit();
    }
  });
  document.addEventListener("htmx:wsAfterSend", function (event) {
    var form = event.target.closest && event.target.closest("#composer");
    if (form) { form.reset(); form.querySelector("textarea").focus(); }
  });
  function nearBottom() {
    return window.innerHeight + window.scrollY >= document.body.scrollHeight - 160;
  }
  var follow = true;
  document.addEventListener("htmx:wsBeforeMessage", function () { follow = nearBottom(); });
  function markCurrent() {
    document.querySelectorAll(".conversation-item").forEach(function (item) {
      var link = item.querySelector("a");
      item.classList.toggle("current", !!link && link.pathname === window.location.pathname);
    });
  }
  document.addEventListener("htmx:wsAfterMessage", function () {
    markCurrent();
    if (follow) window.scrollTo(0, document.body.scrollHeight);
  });
  // Pushes sent while the page had no socket are lost: after a reconnect, and
  // on the first connect when a reply was in progress as the page was drawn
  // (it may have moved on before the socket joined), redraw from the server
  // (the database is the truth); frames continue from there.
  var opened = false;
  var ACTIVE = "#messages .run-status:not(.run-completed):not(.run-failed):not(.run-cancelled)";
  document.addEventListener("htmx:wsOpen", function () {
    var stale = opened || document.querySelector(ACTIVE);
    if (stale && document.getElementById("messages") && window.htmx) {
      window.htmx.ajax("GET", window.location.href, {
        target: "#messages", select: "#messages", swap: "outerHTML"
      });
    }
    opened = true;
  });
  document.addEventListener("DOMContentLoaded", function () {
    if (document.getElementById("messages")) window.scrollTo(0, document.body.scrollHeight);
  });
})();

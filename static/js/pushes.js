// Pushes over the page's WebSocket are fragments swapped out of band, each naming
// where it lands (hx-swap-oob, conversations/events.py and approvals/events.py).
// They go to every page of a user (the approval card, the badge, the sidebar's
// items), and each page shows only some of those places: the approvals page has
// no sidebar, the usage page no approval slot. The "push-targets" extension
// drops the fragments whose place this page does not have, before htmx swaps
// the rest (htmx would log htmx:oobErrorNoTarget for each).
(function () {
  "use strict";
  function target(fragment) {
    var oob = fragment.getAttribute("hx-swap-oob") || "true";
    var colon = oob.indexOf(":");
    return colon > 0 ? oob.slice(colon + 1) : "#" + fragment.id;
  }
  function present(selector) {
    try {
      return document.querySelector(selector) !== null;
    } catch (error) {
      return true; // not a plain selector: let htmx handle it
    }
  }
  htmx.defineExtension("push-targets", {
    transformResponse: function (text, xhr) {
      if (xhr) return text; // an answer to a request: htmx's usual handling
      var template = document.createElement("template");
      template.innerHTML = text;
      var dropped = false;
      Array.prototype.slice.call(template.content.children).forEach(function (fragment) {
        if (!present(target(fragment))) {
          fragment.remove();
          dropped = true;
        }
      });
      return dropped ? template.innerHTML : text;
    }
  });
})();

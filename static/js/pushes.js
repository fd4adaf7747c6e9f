// Pushes over the page's WebSocket are fragments swapped out of band, each naming
// where it lands (hx-swap-oob, conversations/events.py and approvals/events.py).
// They go to every page of a user (the approval card, the badge, the sidebar's
// items), and each page shows only some of those places: the approvals page has
// no sidebar, the usage page no approval slot. The "push-targets" extension
// takes the fragments whose place this page does not have out of the push before
// htmx swaps the rest (htmx would log htmx:oobErrorNoTarget for each).
//
// A fragment for a place inside a run's block (its messages, parts, status line,
// a message's body, tail or tool steps, an approval slot) whose place is missing is
// held, not dropped, for HOLD_MS: two processes push about one run (the web its new
// block, the worker what goes inside it), and the worker's push can reach the page
// first. Held fragments are swapped, in the order they came, after a later push
// has made their place; a held append skips an element the page already has (same
// id). A delete of something missing is done already and is never held; other
// fragments without their place are dropped as before (another page's sidebar).
(function () {
  "use strict";
  var HOLD_MS = 30000;
  var HOLD_MAX = 500;
  var api = null;
  var held = []; // {oob, html, at, seq}
  var seq = 0; // pushes received so far: a held fragment waits for a later push
  var HOLDABLE = /^#(run-\d+-(messages|parts|status)|message-\d+(-body|-tail)?|tool-steps-\d+|approval-slot-\d+)$/;

  function oobOf(fragment) {
    return fragment.getAttribute("hx-swap-oob") || "true";
  }
  function target(oob, fragment) {
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
  function parse(html) {
    var template = document.createElement("template");
    template.innerHTML = html;
    return template.content.firstElementChild;
  }
  function withoutKnown(oob, fragment) {
    // An append of elements the page already has (a later push drew them) adds nothing.
    if (oob.indexOf("beforeend:") !== 0 && oob.indexOf("afterbegin:") !== 0) return fragment;
    Array.prototype.slice.call(fragment.children).forEach(function (child) {
      if (child.id && document.getElementById(child.id)) child.remove();
    });
    return fragment;
  }
  function replayHeld(socketElt) {
    if (!held.length || !api) return;
    var now = Date.now();
    var waiting = [];
    var settleInfo = api.makeSettleInfo(socketElt);
    held.forEach(function (item) {
      if (now - item.at > HOLD_MS) return; // its place never came: forget it
      if (item.seq === seq) {
        waiting.push(item); // held by this very push: only a later one makes its place
        return;
      }
      var fragment = parse(item.html);
      if (!fragment) return;
      if (!present(target(item.oob, fragment))) {
        waiting.push(item);
        return;
      }
      api.oobSwap(item.oob, withoutKnown(item.oob, fragment), settleInfo);
    });
    held = waiting;
    api.settleImmediately(settleInfo.tasks);
  }

  htmx.defineExtension("push-targets", {
    init: function (apiRef) {
      api = apiRef;
    },
    transformResponse: function (text, xhr) {
      if (xhr) return text; // an answer to a request: htmx's usual handling
      seq += 1;
      var template = document.createElement("template");
      template.innerHTML = text;
      var changed = false;
      Array.prototype.slice.call(template.content.children).forEach(function (fragment) {
        var oob = oobOf(fragment);
        var place = target(oob, fragment);
        if (!present(place)) {
          if (oob.indexOf("delete") !== 0 && HOLDABLE.test(place) && held.length < HOLD_MAX) {
            held.push({ oob: oob, html: fragment.outerHTML, at: Date.now(), seq: seq });
          }
          fragment.remove();
          changed = true;
        }
      });
      return changed ? template.innerHTML : text;
    },
    onEvent: function (name, event) {
      if (name === "htmx:wsAfterMessage") replayHeld(event.target);
    }
  });
})();

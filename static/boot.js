// A classic script, apart from the page's modules: if they fail to load (a library missing from
// node_modules, a browser without ES modules), the status says so instead of "Connecting" forever.

(function () {
  var LIMIT_MS = 8000;
  setTimeout(function () {
    if (window.parley) return;
    var status = document.getElementById("status");
    if (!status) return;
    status.dataset.state = "offline";
    status.querySelector(".status-label").textContent = "Offline";
    var reason = status.querySelector(".status-reason");
    reason.hidden = false;
    reason.textContent =
      "The page's scripts did not load. Reload the page; if this stays, the server is missing its browser libraries (run scripts/install.sh) or this browser is too old.";
  }, LIMIT_MS);
})();

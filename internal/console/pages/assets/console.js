// Live refresh of the payments list; the console works without it.
(function () {
  var box = document.querySelector("[data-live]");
  if (!box) return;
  box.checked = sessionStorage.getItem("ecommpay-live") === "1";
  var timer = null;
  function arm() {
    clearTimeout(timer);
    if (box.checked) timer = setTimeout(function () { location.reload(); }, 10000);
  }
  box.addEventListener("change", function () {
    sessionStorage.setItem("ecommpay-live", box.checked ? "1" : "0");
    arm();
  });
  arm();
})();

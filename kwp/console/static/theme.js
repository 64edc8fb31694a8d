// Applies the stored theme before the first paint (a module script would run
// too late, and the Content-Security-Policy allows no inline script).
(function () {
  var theme = null;
  try {
    theme = localStorage.getItem("kwp.theme");
  } catch (e) {}
  if (theme === "light" || theme === "dark") {
    document.documentElement.setAttribute("data-theme", theme);
  }
})();

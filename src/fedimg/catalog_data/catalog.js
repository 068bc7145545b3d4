"use strict";
// Filters the rows by architecture and region; the choice is kept in the address's fragment
// (#arch=arm64&region=eu-west-1) so that a filtered view can be linked to.
(function () {
  const form = document.getElementById("filters");
  const arch = document.getElementById("arch");
  const region = document.getElementById("region");
  const shown = document.getElementById("shown");
  const rows = Array.from(document.querySelectorAll("#images tbody tr"));

  function choose(select, value) {
    if (Array.from(select.options).some(function (o) { return o.value === value; })) {
      select.value = value;
    }
  }

  function apply() {
    let count = 0;
    for (const row of rows) {
      const visible = (!arch.value || row.dataset.arch === arch.value) &&
        (!region.value || row.dataset.region === region.value);
      row.hidden = !visible;
      if (visible) {
        count += 1;
      }
    }
    shown.textContent = count + " of " + rows.length + " images shown";
  }

  function remember() {
    const chosen = new URLSearchParams();
    if (arch.value) { chosen.set("arch", arch.value); }
    if (region.value) { chosen.set("region", region.value); }
    history.replaceState(null, "", chosen.toString() ? "#" + chosen.toString() : location.pathname);
    apply();
  }

  const initial = new URLSearchParams(location.hash.slice(1));
  choose(arch, initial.get("arch") || "");
  choose(region, initial.get("region") || "");
  arch.addEventListener("change", remember);
  region.addEventListener("change", remember);
  form.hidden = false;
  apply();
})();

// Reveal one quarantined preview at a time; every other one goes back to blurred greyscale.
"use strict";
document.addEventListener("click", (event) => {
  const target = event.target instanceof Element ? event.target.closest(".preview") : null;
  if (!target) return;
  const reveal = !target.classList.contains("revealed");
  for (const other of document.querySelectorAll(".preview.revealed")) other.classList.remove("revealed");
  if (reveal) target.classList.add("revealed");
  target.setAttribute("aria-pressed", String(reveal));
});

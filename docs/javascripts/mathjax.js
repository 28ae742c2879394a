// MathJax 3 configuration; mkdocs.yml loads this before assets/mathjax/tex-mml-chtml.js
// (MathJax served from the site itself, copied there by docs/hooks.py).
//
// Only these elements are typeset, everything else is left alone:
// * `arithmatex`: maths in Markdown pages and docstrings (pymdownx.arithmatex,
//   generic mode, writes \( \) and \[ \] inside these elements);
// * the notebooks' rendered Markdown (mkdocs-jupyter keeps $...$ and $$...$$
//   as written, in elements of class jp-RenderedMarkdown);
// * `md-ellipsis`: the text of the menu's and the table of contents' links,
//   where a notebook heading's maths arrives as written.
// MathJax skips an element whose class matches ignoreHtmlClass unless it matches
// processHtmlClass, and an element without a class inherits its parent's
// choice: ".+" (any class at all) rather than the usual ".*|", which would also
// skip the class-less <p> and <li> of a notebook's Markdown cell.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".+",
    processHtmlClass: "arithmatex|jp-RenderedMarkdown|jp-RenderedLatex|md-ellipsis",
  },
};

// Loaded on pages with widgets, after require.js and before the ipywidgets embedder
// (copied into book/_vendor by book/build.py vendor).
(function () {
  // 1. The embedder loads its own modules and fonts through RequireJS: point it at the copy
  //    the book serves, so that nothing comes from a CDN.
  var root = document.documentElement.dataset.content_root || './';
  require.config({paths: {'@jupyter-widgets/html-manager': root + '_static/html-manager'}});

  // 2. ipywidgets 8 views typeset their labels with the MathJax 2 call
  //    MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]); the book serves MathJax 3, which
  //    has no Hub. Bridge that one call to MathJax 3's typesetPromise, whenever MathJax 3
  //    installs itself as window.MathJax (it replaces Sphinx's configuration object).
  var hub = {
    Queue: function (job) {
      var element = job && job[2];
      var mj = window.MathJax;
      if (!mj || !mj.startup || !mj.startup.promise) return;
      mj.startup.promise.then(function () {
        return mj.typesetPromise(element ? [element] : undefined);
      });
    }
  };
  var current = window.MathJax;
  Object.defineProperty(window, 'MathJax', {
    configurable: true,
    get: function () { return current; },
    set: function (value) {
      current = value;
      if (value && typeof value === 'object' && value.version && !value.Hub) value.Hub = hub;
    }
  });
})();

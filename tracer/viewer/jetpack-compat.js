// circuit-tracer's page was written against Anthropic's fork of d3-jetpack, whose conventions()
// also returns c.drawAxis(svg); npm's d3-jetpack has drawAxis(c) instead. Add the method.
(function () {
  var conventions = d3.conventions
  d3.conventions = function (c) {
    c = conventions(c)
    c.drawAxis = function (svg) { return d3.drawAxis(Object.assign({}, c, {svg: svg || c.svg})) }
    return c
  }
})()

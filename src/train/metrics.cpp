#include "train/metrics.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/files.h"

namespace bhasa {

MetricsLog::MetricsLog(const std::string& path, int64_t keep_through_step) : path_(path) {
  std::string kept;
  std::error_code ec;
  if (keep_through_step > 0 && std::filesystem::exists(path, ec)) {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.contains("step")) continue;
      if (j["step"].get<int64_t>() <= keep_through_step) kept += line + "\n";
    }
  }
  atomic_write_file(path, kept);
  f_ = std::fopen(path.c_str(), "a");
  check(f_ != nullptr, "cannot open " + path + " for writing: " + std::strerror(errno));
}

MetricsLog::~MetricsLog() {
  if (f_) std::fclose(f_);
}

void MetricsLog::write(const nlohmann::ordered_json& record) {
  const std::string line = record.dump() + "\n";
  std::fwrite(line.data(), 1, line.size(), f_);
  std::fflush(f_);
}

LossCurves read_loss_curves(const std::string& metrics_path) {
  LossCurves c;
  std::ifstream in(metrics_path);
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("step")) continue;
    const int64_t step = j["step"].get<int64_t>();
    if (j.contains("loss") && j["loss"].is_number()) c.train.push_back({step, j["loss"].get<double>()});
    if (j.contains("val_loss") && j["val_loss"].is_number()) c.val.push_back({step, j["val_loss"].get<double>()});
  }
  return c;
}

// A "nice" tick spacing (1, 2 or 5 times a power of ten) giving about `count` ticks.
static double nice_step(double range, int count) {
  if (range <= 0) return 1;
  const double raw = range / count;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
}

static std::string fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

static std::string xml_escape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    if (ch == '<') out += "&lt;";
    else if (ch == '>') out += "&gt;";
    else if (ch == '&') out += "&amp;";
    else out += ch;
  }
  return out;
}

std::string loss_svg(const LossCurves& curves, const std::string& title) {
  const double W = 800, H = 480, left = 70, right = 20, top = 40, bottom = 60;
  const double pw = W - left - right, ph = H - top - bottom;
  int64_t max_step = 1;
  double lo = INFINITY, hi = -INFINITY;
  for (const auto* series : {&curves.train, &curves.val})
    for (const auto& p : *series) {
      max_step = std::max(max_step, p.step);
      if (std::isfinite(p.loss)) lo = std::min(lo, p.loss), hi = std::max(hi, p.loss);
    }
  if (!std::isfinite(lo)) lo = 0, hi = 1;
  if (hi - lo < 1e-6) hi = lo + 1;
  const double ystep = nice_step(hi - lo, 6);
  lo = std::floor(lo / ystep) * ystep;
  hi = std::ceil(hi / ystep) * ystep;
  const double xstep = nice_step(static_cast<double>(max_step), 8);
  const double xmax = std::ceil(max_step / xstep) * xstep;
  auto X = [&](double s) { return left + pw * s / xmax; };
  auto Y = [&](double l) { return top + ph * (1 - (l - lo) / (hi - lo)); };

  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  o << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  o << "<text x=\"" << W / 2 << "\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">" << xml_escape(title) << "</text>\n";
  // Grid, ticks and tick labels.
  for (double y = lo; y <= hi + ystep / 2; y += ystep)
    o << "<line x1=\"" << left << "\" y1=\"" << Y(y) << "\" x2=\"" << left + pw << "\" y2=\"" << Y(y)
      << "\" stroke=\"#e5e5e5\"/><text x=\"" << left - 6 << "\" y=\"" << Y(y) + 4 << "\" text-anchor=\"end\">"
      << fmt(y) << "</text>\n";
  for (double x = 0; x <= xmax + xstep / 2; x += xstep)
    o << "<line x1=\"" << X(x) << "\" y1=\"" << top << "\" x2=\"" << X(x) << "\" y2=\"" << top + ph
      << "\" stroke=\"#e5e5e5\"/><text x=\"" << X(x) << "\" y=\"" << top + ph + 18 << "\" text-anchor=\"middle\">"
      << fmt(x) << "</text>\n";
  o << "<rect x=\"" << left << "\" y=\"" << top << "\" width=\"" << pw << "\" height=\"" << ph
    << "\" fill=\"none\" stroke=\"black\"/>\n";
  o << "<text x=\"" << left + pw / 2 << "\" y=\"" << H - 15 << "\" text-anchor=\"middle\">step</text>\n";
  o << "<text transform=\"translate(18," << top + ph / 2 << ") rotate(-90)\" text-anchor=\"middle\">"
    << "loss (nats per token)</text>\n";

  auto polyline = [&](const std::vector<LossPoint>& pts, const char* color, double width, double opacity) {
    if (pts.empty()) return;
    o << "<polyline fill=\"none\" stroke=\"" << color << "\" stroke-width=\"" << width << "\" stroke-opacity=\""
      << opacity << "\" points=\"";
    for (const auto& p : pts)
      if (std::isfinite(p.loss)) o << X(static_cast<double>(p.step)) << "," << Y(p.loss) << " ";
    o << "\"/>\n";
  };
  // Raw train loss is noisy: draw it faint, with a moving average on top.
  polyline(curves.train, "#1f77b4", 1, 0.3);
  std::vector<LossPoint> smooth;
  const size_t win = std::max<size_t>(1, curves.train.size() / 50);
  double sum = 0;
  for (size_t i = 0; i < curves.train.size(); ++i) {
    sum += curves.train[i].loss;
    if (i >= win) sum -= curves.train[i - win].loss;
    smooth.push_back({curves.train[i].step, sum / static_cast<double>(std::min(i + 1, win))});
  }
  polyline(smooth, "#1f77b4", 2, 1);
  polyline(curves.val, "#d62728", 2, 1);
  for (const auto& p : curves.val)
    if (std::isfinite(p.loss))
      o << "<circle cx=\"" << X(static_cast<double>(p.step)) << "\" cy=\"" << Y(p.loss) << "\" r=\"3\" fill=\"#d62728\"/>\n";
  // Legend.
  const double lx = left + pw - 150, ly = top + 15;
  o << "<line x1=\"" << lx << "\" y1=\"" << ly << "\" x2=\"" << lx + 25 << "\" y2=\"" << ly
    << "\" stroke=\"#1f77b4\" stroke-width=\"2\"/><text x=\"" << lx + 30 << "\" y=\"" << ly + 4 << "\">train loss</text>\n";
  o << "<line x1=\"" << lx << "\" y1=\"" << ly + 18 << "\" x2=\"" << lx + 25 << "\" y2=\"" << ly + 18
    << "\" stroke=\"#d62728\" stroke-width=\"2\"/><text x=\"" << lx + 30 << "\" y=\"" << ly + 22
    << "\">validation loss</text>\n";
  o << "</svg>\n";
  return o.str();
}

void write_loss_svg(const std::string& path, const LossCurves& curves, const std::string& title) {
  atomic_write_file(path, loss_svg(curves, title));
}

}  // namespace bhasa

// agent.engine._annoy_batch: a whole batch of Annoy queries in one call, with the GIL released.
//
// Why it exists: Annoy's Python binding answers one vector per call. At the agent's rates that
// costs a Python call, a list conversion and two Python lists per query per layer, and the GIL is
// held while those lists are built, so the index threads queue behind each other. Here the batch
// crosses into C++ once: the queries are read straight from the numpy buffer, the threads split
// the batch into contiguous slices, and each writes its rows of the (n, k) outputs in place.
//
// The index is Annoy's own C++ class (annoylib.h, from the annoy release that setup.py names),
// opened from the same file the Python binding writes, memory-mapped without prefaulting, so
// processes on one node still share the index pages through the page cache.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "annoylib.h"
#include "kissrandom.h"

namespace py = pybind11;

namespace {

using Index = Annoy::AnnoyIndex<int32_t, float, Annoy::Euclidean, Annoy::Kiss64Random,
                                Annoy::AnnoyIndexSingleThreadedBuildPolicy>;
using Queries = py::array_t<float, py::array::c_style | py::array::forcecast>;

constexpr int64_t kMissing = -1;  // agent.engine.index.MISSING

class BatchIndex {
 public:
  BatchIndex(const std::string& path, int dim) : dim_(dim), index_(dim) {
    if (dim < 1) throw std::invalid_argument("dim must be positive");
    char* error = nullptr;
    if (!index_.load(path.c_str(), /*prefault=*/false, &error)) {
      std::string reason = error != nullptr ? error : "unknown error";
      std::free(error);
      throw std::runtime_error(path + ": " + reason);
    }
  }

  int dim() const { return dim_; }
  int n_items() const { return index_.get_n_items(); }

  // (distances float32, ids int64), both (n, k), nearest first; short rows pad with -1 / +inf.
  py::tuple search(const Queries& queries, int k, int search_k, int threads) const {
    if (queries.ndim() != 2 || queries.shape(1) != dim_) {
      throw std::invalid_argument("queries must have shape (n, " + std::to_string(dim_) + ")");
    }
    if (k < 1) throw std::invalid_argument("k must be positive");
    const py::ssize_t n = queries.shape(0);
    py::array_t<float> distances({n, static_cast<py::ssize_t>(k)});
    py::array_t<int64_t> ids({n, static_cast<py::ssize_t>(k)});
    const float* rows = queries.data();
    float* distance_out = distances.mutable_data();
    int64_t* id_out = ids.mutable_data();
    {
      py::gil_scoped_release release;
      auto search_slice = [&](py::ssize_t start, py::ssize_t stop) {
        std::vector<int32_t> found;
        std::vector<float> found_distances;
        for (py::ssize_t i = start; i < stop; ++i) {
          found.clear();
          found_distances.clear();
          index_.get_nns_by_vector(rows + i * dim_, k, search_k, &found, &found_distances);
          const size_t have = std::min(found.size(), static_cast<size_t>(k));
          int64_t* id_row = id_out + i * k;
          float* distance_row = distance_out + i * k;
          for (size_t j = 0; j < have; ++j) {
            id_row[j] = found[j];
            distance_row[j] = found_distances[j];
          }
          for (size_t j = have; j < static_cast<size_t>(k); ++j) {
            id_row[j] = kMissing;
            distance_row[j] = std::numeric_limits<float>::infinity();
          }
        }
      };
      const py::ssize_t workers = std::max<py::ssize_t>(1, std::min<py::ssize_t>(threads, n));
      std::vector<std::thread> helpers;
      for (py::ssize_t w = 1; w < workers; ++w) {
        helpers.emplace_back(search_slice, n * w / workers, n * (w + 1) / workers);
      }
      search_slice(0, n / workers);  // the calling thread takes the first slice
      for (auto& helper : helpers) helper.join();
    }
    return py::make_tuple(distances, ids);
  }

  // Every stored vector, (n_items, dim) float32, in item order.
  py::array_t<float> item_vectors() const {
    const py::ssize_t n = index_.get_n_items();
    py::array_t<float> out({n, static_cast<py::ssize_t>(dim_)});
    float* data = out.mutable_data();
    {
      py::gil_scoped_release release;
      for (py::ssize_t i = 0; i < n; ++i) index_.get_item(static_cast<int32_t>(i), data + i * dim_);
    }
    return out;
  }

 private:
  int dim_;
  Index index_;
};

}  // namespace

PYBIND11_MODULE(_annoy_batch, module) {
  module.doc() = "Batched Annoy queries with the GIL released (see agent/engine/index.py).";
  py::class_<BatchIndex>(module, "BatchIndex")
      .def(py::init<const std::string&, int>(), py::arg("path"), py::arg("dim"))
      .def_property_readonly("dim", &BatchIndex::dim)
      .def_property_readonly("n_items", &BatchIndex::n_items)
      .def("search", &BatchIndex::search, py::arg("queries"), py::arg("k"), py::arg("search_k"), py::arg("threads"))
      .def("item_vectors", &BatchIndex::item_vectors);
}

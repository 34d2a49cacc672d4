// The ops' option codes, as mstein_fast.numerics defines them (SIMILARITIES, ACTIVATIONS); the module
// exports them (_C.SIMILARITY_CODES, _C.ACTIVATION_CODES) and a test checks that both sides agree.
#pragma once

namespace mstein {

// W2 -> similarity of the InfoNCE logits (the `kind` argument of the InfoNCE kernels).
enum Similarity : int { SIM_INV = 0 /* 1 / (1 + W) */, SIM_NEG = 1 /* -W */ };

// The fused layers' activation (the `act` argument of the dense, feed-forward, norm and gather kernels).
enum Activation : int { ACT_NONE = 0, ACT_ELU = 1, ACT_ELU_PLUS_ONE = 2 };

}  // namespace mstein

"""The optimisation loop as it was before issue #24 made it lean: the reference that
tests/test_math.py holds the lean loop to (same iterates, bit for bit on the CPU) and that the
bench's ``syncs`` section counts host reads against."""

from __future__ import annotations

import torch

from batch_ast.transfer import StyleTransfer


class PreviousLoop(StyleTransfer):
    """The optimisation loop as it was before it was made lean (issue #24), kept as the reference
    the lean loop must equal: plain torch L-BFGS, an evaluation cache keyed by comparing whole
    spectrograms, the stuck-search check by comparing them again, three reads per iteration."""

    def _make_optimizer(self):
        p = self.params
        if p.optimizer != "lbfgs":
            return super()._make_optimizer()
        return torch.optim.LBFGS([self.x], lr=p.lr, max_iter=1, max_eval=25, history_size=p.lbfgs_history,
                                 tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def _evaluate_cached(self, at_start=False):
        x = self.x.detach()
        last = getattr(self, "_previous_last", None)
        if last is not None and torch.equal(last[0], x):
            self.x.grad = last[1].clone()
            return last[2]
        terms = self.evaluate(self)
        self.evaluations += 1
        if isinstance(self.optimizer, torch.optim.LBFGS):
            self._previous_last = (x.clone(), self.x.grad.detach().clone(), terms)
        return terms

    def step(self):
        if self.finished:
            return False
        first, before_evals = [], self.evaluations

        def closure():
            self.optimizer.zero_grad(set_to_none=True)
            total, c, s = self._evaluate_cached()
            if not first:
                first.append((total.item(), c.item(), s.item()))
            return total

        if isinstance(self.optimizer, torch.optim.LBFGS):
            before = self.x.detach().clone()
            self.optimizer.step(closure)
            if torch.equal(before, self.x.detach()):
                self.optimizer.state.clear()
                self.restarts = getattr(self, "restarts", 0) + 1
        else:
            closure()
            self.optimizer.step()
        total, c, s = first[0]
        self._trace.append((self.iteration, total, c, s, self.evaluations - before_evals))
        return self._stopping_rule(total)  # unchanged by issue #24: shared, not copied

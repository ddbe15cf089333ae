"""Network families: linear tensor networks (Yun, Krishnan & Mobahi, ICLR 2021), each describing its own
max-margin geometry (`MarginGeometry`)."""

from ._base import AbstractLinearTensorNetwork as AbstractLinearTensorNetwork
from ._base import AbstractOrthogonallyDecomposableNetwork as AbstractOrthogonallyDecomposableNetwork
from ._base import MarginGeometry as MarginGeometry
from ._convolutional import Convolutional as Convolutional
from ._convolutional import FullLengthConvolutional as FullLengthConvolutional
from ._convolutional import ShortKernelConvolutional as ShortKernelConvolutional
from ._diagonal import Diagonal as Diagonal
from ._fully_connected import FullyConnected as FullyConnected
from ._linear import Linear as Linear
from ._relu import MLP as MLP
from ._relu import TwoLayer as TwoLayer
from ._signed import SignedDiagonal as SignedDiagonal
from ._smoothed import Smoothed as Smoothed
from ._tensor import TensorNetwork as TensorNetwork
